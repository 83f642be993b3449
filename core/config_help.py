"""One line of help for every config key: the Config screen shows it, `config init` writes it as a comment,
and README's config reference is checked against it."""

from __future__ import annotations

HELP: dict[str, str] = {
    "model.path": "base model: local directory, Hugging Face id, or \"demo\" (the tiny offline model)",
    "model.quantize": "0 = train on the checkpoint's weights; 4 or 8 = quantize the base first (QLoRA)",
    "model.dtype": "auto = bfloat16 on Apple/CUDA GPUs, float32 on CPUs",
    "model.adapter": "warm-start from this adapter directory (empty = fresh LoRA)",
    "model.trust_remote_code": "allow custom code shipped with the model (off: such models are refused)",
    "model.quantized_matmul": "quantized bases: dequantize the layers' and head's weights (faster on CUDA, CPUs) or "
                              "use the kernel; auto = kernel on Apple GPUs",
    "data.path": "JSONL dataset (relative paths are relative to this file)",
    "data.format": "the records' format (auto: detected per file)",
    "data.max_seq_len": "longer examples lose prompt tokens from the left; the completion is kept",
    "data.valid_fraction": "share of examples held out for validation (stratified by label)",
    "data.strict": "true: refuse a file with bad lines; false: set them aside and report them",
    "data.string_format": "plain-string {prompt, completion} records: raw (as TRL: the text, no chat template, EOS "
                          "added) or chat (the prompt as a user message)",
    "data.train_on": "SFT trains every assistant turn (all_assistant, as TRL's assistant_only_loss) or the last one; "
                     "KTO always judges the last",
    "data.tools": "tool schemas (a JSON list) for native tool calls; relative to the dataset's directory "
                  "(empty = tools.json beside the dataset, if any)",
    "lora.type": "lora or dora",
    "lora.rank": "rank of the low-rank update",
    "lora.scale": "multiplier of the update (alpha / rank)",
    "lora.dropout": "dropout on the adapter input during training",
    "lora.keys": "linear layers that get adapters, by name (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                 "down_proj; other names are refused)",
    "lora.num_layers": "adapt the last N transformer blocks (-1 = all; otherwise 1 to 4096)",
    "train.method": "sft (assistant tokens of desirable examples) or kto (desirable and undesirable)",
    "train.iters": "optimizer steps (at most 10,000,000, as for every step count)",
    "train.epochs": "> 0 overrides iters: passes over the training split",
    "train.batch_size": "examples per micro-batch (KTO needs >= 2)",
    "train.grad_accumulation": "micro-batches per optimizer step",
    "train.learning_rate": "0 = the method's default (1e-4 for SFT, 1e-5 for KTO); otherwise 1e-12 to 1 (a value "
                           "that underflows to 0, like 1e-400, is refused)",
    "train.lr_schedule": "cosine, linear or constant, after a linear warmup",
    "train.warmup_steps": "steps of linear warmup from 0",
    "train.min_lr_ratio": "final learning rate as a fraction of the peak (cosine/linear)",
    "train.weight_decay": "AdamW weight decay",
    "train.optimizer": "adamw (bias-corrected, as torch and TRL) or adamw_mlx (mlx-lm's, uncorrected: early steps "
                       "3-6.5x larger at the same rate)",
    "train.max_grad_norm": "clip the global gradient norm (0 = off)",
    "train.grad_checkpoint": "recompute activations in the backward pass, one layer at a time: much less memory, ~30% "
                             "slower",
    "train.compile": "compile the step (each layer under grad_checkpoint): pays only at fixed shapes; auto = the "
                     "optimizer update only, on GPUs; off = none",
    "train.lean_backward": "keep less for the backward (H200, 7B bf16 4x512: 28.5 -> 23.2 GB, 4% slower); auto = on "
                           "GPUs without grad_checkpoint",
    "train.save_every": "checkpoint every N steps",
    "train.keep_checkpoints": "keep the newest N checkpoints, deleting older ones once a new one verifies (0 = keep "
                              "all)",
    "train.eval_every": "validation loss every N steps",
    "train.eval_batches": "validation batches per evaluation (0 = all)",
    "train.report_every": "write a step event every N steps",
    "train.sample_every": "every N steps (and at the last), the adapter's greedy answers to held-out prompts, on the "
                          "Train screen (0 = off)",
    "train.sample_prompts": "how many held-out prompts are sampled (the first of the validation split; 1 to 16)",
    "train.sample_tokens": "the longest sampled answer, in tokens (1 to 4096)",
    "train.seed": "seed for data order, dropout and initialisation (0 to 2**32 - 1)",
    "kto.beta": "KTO temperature: larger keeps the policy closer to the reference",
    "kto.desirable_weight": "lambda_D; with undesirable_weight keep (lD*nD)/(lU*nU) in [1, 4/3]",
    "kto.undesirable_weight": "lambda_U",
    "kto.loss_type": "kto (TRL's, with the KL baseline) or apo_zero_unpaired (no KL)",
    "kto.kl_pairs": "batch (each prompt with the previous example's completion in its micro-batch, as TRL; a 1.4-3x "
                    "steadier KL) or dataset (a fixed derangement)",
}
