"""core.template: chat rendering, the loss-mask boundary, truncation, and Mistral v3 fidelity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunedeck.core import template
from tunedeck.core.data import Example, load
from tunedeck.core.template import encode, encode_prompt, has_chat_template, token_pieces

SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
SIMPLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
)
SENTENCES = [
    "Find my notes about the garden. Sure, here they are.",
    "And the pond? The pond notes are in the blue folder.",
    "What is on my calendar today? You have the dentist at 3pm.",
    "The quick brown fox jumps over the lazy dog.",
]


def bpe(chat_template: str | None, add_bos: bool = False):
    """A small ByteLevel BPE tokenizer, like the demo model's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 5, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def simple():
    return bpe(SIMPLE_TEMPLATE)


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


CHAT = [{"role": "user", "content": "Find my notes about the garden"}, {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "And the pond?"}]


def test_mask_token_by_token_with_a_small_bpe(simple):
    enc = encode(simple, CHAT, "The pond notes are in the blue folder.")
    prompt = ids(simple, "<s>[INST] Find my notes about the garden [/INST] Sure.</s>[INST] And the pond? [/INST]")
    completion = ids(simple, " The pond notes are in the blue folder.") + [simple.eos_token_id]
    assert enc.ids == prompt + completion
    assert enc.prompt_len == len(prompt) and enc.completion_len == len(completion)
    assert enc.ids[enc.prompt_len - 1] == simple.convert_tokens_to_ids("[/INST]")
    assert enc.ids[-1] == simple.eos_token_id and enc.ids.count(simple.bos_token_id) == 1
    assert (enc.truncated_prompt_tokens, enc.completion_too_long) == (0, False)
    assert encode_prompt(simple, CHAT) == prompt


def test_mlx_lm_tokenizer_wrapper_gives_the_same_ids(simple):
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    wrapped = TokenizerWrapper(simple)
    assert has_chat_template(wrapped)
    assert encode(wrapped, CHAT, "Yes.") == encode(simple, CHAT, "Yes.")


def test_mistral_template_on_a_bpe_tokenizer_like_the_demo():
    tok = bpe(template.MISTRAL_V3_CHAT_TEMPLATE)
    prompt = [{"role": "system", "content": "Be brief."}, *CHAT]
    enc = encode(tok, prompt, "Blue folder.")
    head = ids(tok, "<s>[INST] Find my notes about the garden[/INST] Sure.</s>"
                    "[INST] Be brief.\n\nAnd the pond?[/INST]")
    assert enc.ids == head + ids(tok, " Blue folder.") + [tok.eos_token_id] and enc.prompt_len == len(head)


def test_no_chat_template_falls_back_to_plain_lines():
    tok = bpe(None)
    assert not has_chat_template(tok)
    enc = encode(tok, CHAT, "Here.")
    head = ids(tok, "user: Find my notes about the garden\nassistant: Sure.\nuser: And the pond?\nassistant:")
    assert enc.ids == head + ids(tok, " Here.") + [tok.eos_token_id] and enc.prompt_len == len(head)


@pytest.mark.parametrize("add_bos", [False, True])
def test_text_format_is_bos_text_eos(add_bos):
    tok = bpe(SIMPLE_TEMPLATE, add_bos=add_bos)
    enc = encode(tok, [], "The quick brown fox")
    bos = [tok.bos_token_id] if add_bos else []
    assert enc.ids == bos + ids(tok, "The quick brown fox") + [tok.eos_token_id]
    assert enc.prompt_len == len(bos)


def test_eos_is_appended_when_the_template_has_none():
    tok = bpe("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant: {% endif %}")
    enc = encode(tok, CHAT, "Here.")
    assert enc.ids[-1] == tok.eos_token_id and enc.ids.count(tok.eos_token_id) == 1
    assert tok.decode(enc.ids[enc.prompt_len:]) == "Here.\n</s>"


def test_template_that_rerenders_the_prompt_falls_back_to_the_common_prefix():
    tok = bpe("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
              "{% if loop.last %} (last){% endif %} [/INST]{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}")
    prompt = [{"role": "user", "content": "Find the pond"}]
    enc = encode(tok, prompt, "Sure.")
    head = encode_prompt(tok, prompt)
    assert head == ids(tok, "<s>[INST] Find the pond (last) [/INST]")
    assert enc.ids == ids(tok, "<s>[INST] Find the pond [/INST] Sure.") + [tok.eos_token_id]
    common = next(i for i, (a, b) in enumerate(zip(head, enc.ids)) if a != b)
    assert enc.prompt_len == common < len(head)


def test_truncation_keeps_bos_and_completion(simple):
    full = encode(simple, CHAT, "The pond notes.")
    comp = full.ids[full.prompt_len:]
    enc = encode(simple, CHAT, "The pond notes.", max_seq_len=len(comp) + 4)
    assert len(enc.ids) == len(comp) + 4 and enc.ids[0] == simple.bos_token_id
    assert enc.ids[1:4] == full.ids[full.prompt_len - 3 : full.prompt_len]
    assert enc.ids[enc.prompt_len:] == comp and enc.prompt_len == 4
    assert enc.truncated_prompt_tokens == full.prompt_len - 4 and not enc.completion_too_long

    enc = encode(simple, CHAT, "The pond notes.", max_seq_len=3)
    assert enc.completion_too_long and enc.ids == [simple.bos_token_id, *comp[:2]] and enc.prompt_len == 1
    assert enc.truncated_prompt_tokens == full.prompt_len - 1
    assert encode(simple, CHAT, "x", max_seq_len=1000) == encode(simple, CHAT, "x")


def test_encode_example_and_token_pieces(simple):
    ex = Example(CHAT, "Sure, here they are.", True, 1, "")
    enc = template.encode_example(simple, ex)
    pieces = token_pieces(simple, enc.ids)
    assert len(pieces) == len(enc.ids) and "".join(pieces) == simple.decode(enc.ids)
    assert pieces[:2] == ["<s>", "[INST]"]


# ---------------------------------------------------------------- Mistral v3 fidelity

mistral_common = pytest.importorskip("mistral_common")

GARDEN = [{"role": "user", "content": "Find my notes about the garden"}, {"role": "assistant", "content": "Sure."},
          {"role": "user", "content": "And the pond?"}, {"role": "assistant", "content": "In the blue folder."}]
SYSTEM = [{"role": "system", "content": "You are a terse assistant."},
          {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Sunny, 21°C."}]
TOOLS = [{"role": "system", "content": "You can call tools."},
         {"role": "user", "content": "What is on my calendar today?"},
         {"role": "assistant", "content": json.dumps({"name": "calendar_lookup", "arguments": {"date": "today"}})},
         {"role": "tool", "content": json.dumps({"events": ["dentist 3pm"]})},
         {"role": "assistant", "content": "You have the dentist at 3pm."},
         {"role": "user", "content": "Anything tomorrow?"},
         {"role": "assistant", "content": json.dumps({"name": "calendar_lookup", "arguments": {"date": "tomorrow"}})},
         {"role": "tool", "content": "nothing scheduled"},
         {"role": "assistant", "content": "Nothing tomorrow."}]
TOOLS_WITH_IDS = [{**m, "tool_call_id": f"call{i:05d}"} if m["role"] == "tool" else m for i, m in enumerate(TOOLS)]
CONVERSATIONS = {"multi_turn": GARDEN, "system": SYSTEM, "tools": TOOLS, "tools_with_call_ids": TOOLS_WITH_IDS,
                 "single_turn": GARDEN[:2]}


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    from transformers import AutoTokenizer

    d = template.write_mistral_v3_tokenizer(tmp_path_factory.mktemp("mistral"))
    return AutoTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def reference():
    """mistral-common's own encoder. Its request validator is bypassed because our tool-call turns
    are plain assistant text (not structured tool_calls), which it would reject; v3 tool results
    without a call id (which it cannot express) are encoded by its code with the call_id left out."""
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    mt = MistralTokenizer.from_file(str(template.mistral_v3_model_path()), mode=ValidationMode.finetuning)
    inner = mt.instruct_tokenizer
    with_id = inner._prepare_tool_result
    inner._prepare_tool_result = lambda m: (
        with_id(m) if m.tool_call_id else {"content": inner._parse_tool_content(m.content)})

    def encode_ref(messages: list[dict]) -> list[int]:
        req = mt._instruct_request_normalizer.from_chat_completion_request(ChatCompletionRequest(messages=messages))
        return inner.encode_instruct(req).tokens

    encode_ref.raw = inner.tokenizer
    return encode_ref


def test_mistral_tokenizer_dir(mistral):
    assert len(mistral) == 32768 and has_chat_template(mistral)
    assert mistral.convert_ids_to_tokens([3, 4, 5]) == ["[INST]", "[/INST]", "[TOOL_CALLS]"]


def test_known_reference_ids(mistral):
    enc = encode(mistral, GARDEN[:3], "x")
    assert enc.ids[: enc.prompt_len] == [1, 3, 9537, 1354, 9089, 1452, 1040, 9527, 4, 13643, 29491, 2, 3, 1783,
                                         1040, 1052, 1857, 29572, 4]
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    mt = MistralTokenizer.from_file(str(template.mistral_v3_model_path()))  # serving mode, validated
    public = mt.encode_chat_completion(ChatCompletionRequest(messages=GARDEN[:3])).tokens
    assert enc.ids[: enc.prompt_len] == public
    naive = mistral.encode("[INST] Find my notes about the garden [/INST] Sure.", add_special_tokens=True)
    assert naive[naive.index(4) - 1] == 29473  # the stray '▁' the template must avoid
    assert 29473 not in enc.ids


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_mistral_v3_fidelity(mistral, reference, name):
    msgs = CONVERSATIONS[name]
    enc = encode(mistral, msgs[:-1], msgs[-1]["content"])
    assert enc.ids == reference(msgs)
    assert enc.ids[: enc.prompt_len] == reference(msgs[:-1])
    completion = reference.raw.encode(msgs[-1]["content"], bos=False, eos=False) + [2]
    assert enc.ids[enc.prompt_len:] == completion  # the mask starts at the first completion token
    assert enc.ids[enc.prompt_len - 1] in (4, 9)  # right after [/INST] or [/TOOL_RESULTS]


def test_mistral_fidelity_on_the_fixture_dataset(mistral, reference):
    for ex in load(Path(__file__).parent / "fixtures" / "kto.jsonl").examples:
        enc = template.encode_example(mistral, ex)
        assert enc.ids == reference(ex.messages) and enc.ids[: enc.prompt_len] == reference(ex.prompt)


def test_mistral_fidelity_on_the_sample_data(mistral, reference):
    """Every bundled sample example (tool calls, tool results, system prompts) matches the reference."""
    path = Path(__file__).parents[1] / "sample_data" / "notes_tool_use.jsonl"
    if not path.is_file():
        pytest.skip("sample data not generated")
    examples = load(path).examples
    assert any(m["role"] == "tool" for ex in examples for m in ex.prompt)
    for ex in examples:
        enc = template.encode_example(mistral, ex)
        assert enc.ids == reference(ex.messages), ex.line
        assert enc.ids[: enc.prompt_len] == reference(ex.prompt), ex.line


def test_mistral_token_pieces_keep_spaces(mistral):
    enc = encode(mistral, GARDEN[:1], "Sure.")
    assert token_pieces(mistral, enc.ids) == ["<s>", "[INST]", " Find", " my", " notes", " about", " the",
                                              " garden", "[/INST]", " Sure", ".", "</s>"]


def test_write_mistral_v3_tokenizer_files(tmp_path):
    d = template.write_mistral_v3_tokenizer(tmp_path / "tok")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == template.MISTRAL_V3_CHAT_TEMPLATE and cfg["tokenizer_class"] == "LlamaTokenizer"
    assert (d / "tokenizer.model").stat().st_size == template.mistral_v3_model_path().stat().st_size
    shutil.rmtree(d)
