"""Forecast vs measured peak memory at Mistral-7B shape (random weights), for the GPU machine.

    python bench/forecast_7b.py            # prints one JSON line per point, then a table
"""

from __future__ import annotations

import json

from tunedeck.core import config as C
from tunedeck.core import memory
from tunedeck.core.forecast import forecast
from tunedeck.core.memory_probe import measure_peak

QV, PRESET = ["q_proj", "v_proj"], C.LoraConfig().keys

POINTS = [  # (quantize, batch, seq, grad_checkpoint, method, LoRA keys)
    (0, 4, 512, False, "sft", QV),
    (0, 4, 512, False, "kto", QV),
    (0, 4, 2048, False, "sft", QV),
    (0, 2, 1024, True, "sft", QV),
    (4, 2, 1024, True, "sft", QV),
    (4, 2, 1024, True, "kto", QV),
    (4, 4, 2048, True, "kto", PRESET),  # the Mac-24GB preset at its full context
]


def main() -> None:
    mc = memory.model_config_for("mistralai/Mistral-7B-Instruct-v0.3")
    rows = []
    for q, b, s, gc, method, keys in POINTS:
        cfg = C.Config()
        cfg.model.quantize, cfg.model.dtype = q, "bfloat16"
        cfg.lora.keys, cfg.lora.rank, cfg.lora.dropout = keys, 16, 0.0
        cfg.train.batch_size, cfg.train.grad_checkpoint, cfg.train.method = b, gc, method
        cfg.data.max_seq_len = s
        measured = measure_peak(cfg, steps=2, seq_len=s, model_config=mc)
        fc = forecast(cfg, mc, 80.0, seq_len=s, backend="cuda")
        row = {"quantize": q, "batch": b, "seq": s, "grad_checkpoint": gc, "method": method, "keys": keys,
               "lean_backward": cfg.train.lean_backward,
               "measured": {k: round(v, 2) for k, v in measured.items()}, "forecast_gb": round(fc.total_gb, 2),
               "parts": {k: round(v, 2) for k, v in fc.parts.items()}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    for r in rows:
        m = r["measured"]["peak_gb"]
        print(f"q{r['quantize']} {r['method']} {r['batch']}x{r['seq']} gc={r['grad_checkpoint']}: "
              f"measured {m:.2f} GB, forecast {r['forecast_gb']:.2f} GB ({(r['forecast_gb'] - m) / m:+.0%})")


if __name__ == "__main__":
    main()
