"""The model zoo: real tiny Llama models trained here (~30 s for the module on 2 busy CPU cores)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from deltapack.zoo import (  # noqa: E402
    PRESETS,
    TASKS,
    Example,
    build_base,
    build_finetune,
    delta_stats,
    evaluate,
    extract_answer,
    is_correct,
    score,
    split_of,
)
from deltapack.zoo.tokenizer import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def zoo(zoo_pair):
    """The tiny preset's base and its arith fine-tune (seed 0): the session's shared pair from
    tests/conftest.py, built once (~22 s) by build_base / build_finetune."""
    base, ft = zoo_pair
    assert (base.name, ft.name) == ("base-tiny-s0", "arith-tiny-s0")
    return {"out": base.parent, "base": base, "ft": ft}


# ----------------------------------------------------------------------------- built models

def test_dirs_load_offline_with_auto_classes(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for d in (zoo["base"], zoo["ft"]):
        model = AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        cfg = model.config
        assert cfg.model_type == "llama"
        assert cfg.tie_word_embeddings is False
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
        assert cfg.num_key_value_heads < cfg.num_attention_heads
        assert tok.bos_token and tok.eos_token and tok.pad_token
        assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
        enc = tok("Q: 1+2=? A:", return_tensors="pt")
        assert enc["input_ids"][0, 0].item() == tok.bos_token_id
        assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "Q: 1+2=? A:"
        with torch.no_grad():
            logits = model(**enc).logits
        assert logits.shape == (1, enc["input_ids"].shape[1], cfg.vocab_size)
        assert torch.isfinite(logits).all()
        assert (d / "model.safetensors").stat().st_size < 5 * 2**20
        stamp = json.loads((d / "zoo.json").read_text())
        assert stamp["key"]["preset"]["name"] == "tiny"


def test_finetune_beats_base_on_its_task(zoo):
    base_acc = evaluate(zoo["base"], "arith", n=100)
    ft_acc = evaluate(zoo["ft"], "arith", n=100)
    assert base_acc <= 0.05
    assert ft_acc >= 0.5, ft_acc
    assert ft_acc >= base_acc + 0.4


def test_batched_generation_matches_one_by_one(zoo):
    """Left padding must not change greedy answers."""
    a1, d1 = evaluate(zoo["ft"], "arith", n=16, batch_size=1, return_details=True)
    a2, d2 = evaluate(zoo["ft"], "arith", n=16, batch_size=16, return_details=True)
    assert [c for _, c in d1] == [c for _, c in d2]
    assert a1 == a2


def test_delta_is_nontrivial(zoo):
    stats = delta_stats(zoo["base"], zoo["ft"])
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens"):
        assert stats[kind]["rel"] > 0.01, (kind, stats[kind])
        assert stats[kind]["min_rel"] > 0.005, (kind, stats[kind])
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert stats[kind]["changed"] > 0.99, (kind, stats[kind])


def test_stamped_build_is_skipped(zoo):
    before = (zoo["base"] / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert build_base(zoo["out"], "tiny", seed=0, quiet=True) == zoo["base"]
    assert build_finetune(zoo["base"], zoo["out"], "arith", "tiny", seed=0, quiet=True) == zoo["ft"]
    assert time.perf_counter() - t0 < 5
    assert (zoo["base"] / "model.safetensors").stat().st_mtime_ns == before


def test_cli_reuses_models_and_prints_accuracies(zoo, capsys):
    from deltapack.zoo.__main__ import main

    assert main(["--preset", "tiny", "--out", str(zoo["out"]), "--tasks", "arith", "--n", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ft:arith" in out and "base" in out and "%" in out


def test_refuses_to_overwrite_foreign_dir(tmp_path):
    micro = replace(PRESETS["tiny"], name="micro", base_steps=1, corpus_chars=50_000)
    foreign = tmp_path / "base-micro-s0"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_base(tmp_path, micro, seed=0, quiet=True)
    assert (foreign / "precious.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes(tmp_path):
    micro = replace(PRESETS["tiny"], name="micro", base_steps=4, ft_steps=4, corpus_chars=100_000)
    files = ("model.safetensors", "tokenizer.json", "config.json")
    built = []
    for run in ("a", "b"):
        b = build_base(tmp_path / run, micro, seed=7, quiet=True)
        f = build_finetune(b, tmp_path / run, "code", micro, seed=7, quiet=True)
        built.append({(d.name, n): (d / n).read_bytes() for d in (b, f) for n in files})
    assert built[0] == built[1]
    other = build_base(tmp_path / "c", micro, seed=8, quiet=True)
    assert (other / "model.safetensors").read_bytes() != built[0][("base-micro-s7", "model.safetensors")]


def test_bf16_save(tmp_path):
    from transformers import AutoModelForCausalLM

    micro = replace(PRESETS["tiny"], name="micro16", base_steps=2, corpus_chars=50_000, dtype="bfloat16")
    b = build_base(tmp_path, micro, seed=0, quiet=True)
    model = AutoModelForCausalLM.from_pretrained(b)
    assert model.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- tasks

@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_generators_are_deterministic_and_splits_disjoint(name):
    task = TASKS[name]
    assert task.examples(50, seed=3, split="train") == task.examples(50, seed=3, split="train")
    assert task.examples(50, seed=3, split="eval") == task.examples(50, seed=3, split="eval")
    assert task.examples(50, seed=3, split="eval") != task.examples(50, seed=4, split="eval")
    train = {ex.prompt for ex in task.examples(3000, seed=0, split="train")}
    evals = {ex.prompt for ex in task.examples(500, seed=0, split="eval")}
    evals |= {ex.prompt for ex in task.examples(500, seed=1234, split="eval")}
    assert train and evals and not (train & evals)
    assert all(split_of(p) == "eval" for p in evals)
    for ex in task.examples(100, seed=0, split="train"):
        assert "####" not in ex.prompt
        assert extract_answer(ex.target) == ex.answer  # the target ends in its own answer


@pytest.mark.parametrize("name", sorted(TASKS))
def test_difficulty_knobs_change_the_problems(name):
    hard = PRESETS["gpu"].difficulty[name]
    easy = TASKS[name].examples(200, seed=0, **PRESETS["tiny"].difficulty[name])
    harder = TASKS[name].examples(200, seed=0, **hard)
    assert sum(len(e.prompt) for e in harder) > sum(len(e.prompt) for e in easy)


def test_task_answers_are_right():
    for ex in TASKS["arith"].examples(200, seed=0, n_ops=3, digits=2, ops="+-*"):
        expr = ex.prompt.removeprefix("Q: ").removesuffix("=? A:")
        assert str(eval(expr)) == ex.answer, ex
    for ex in TASKS["code"].examples(200, seed=0, n_lines=4, max_const=20, ops="+-*"):
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(ex.prompt, {})
        assert buf.getvalue().strip() == ex.answer, ex
    for ex in TASKS["format"].examples(200, seed=0):
        op, words = ex.prompt.strip().split(": ")
        w = words.split()
        want = {"reverse": w[::-1], "upper": [x.upper() for x in w], "sort": sorted(w)}[op]
        assert ex.answer == " ".join(want)


# ----------------------------------------------------------------------------- scoring

def test_exact_match_scoring_on_hand_made_examples():
    exs = [Example("Q: 23+45-17=? A:", " 23+45=68; 68-17=51. #### 51", "51")] * 8
    comps = [
        " 23+45=68; 68-17=51. #### 51",  # right
        " 23+45=68; 68-17=51. #### 51\nQ: 1+1=? A: 2",  # right, then rambles on a new line
        "#### 51 ",  # right, no chain of thought
        " 23+45=68; 68-17=51. #### 510",  # wrong: extra digit
        " 23+45=68; 68-17=51. 51",  # wrong: no ####
        " #### 15",  # wrong
        "",  # wrong: empty
        " #### 51 #### 52",  # the first #### line counts, whole: wrong
    ]
    assert [is_correct(c, e.answer) for c, e in zip(comps, exs)] == [True, True, True, False, False, False, False, False]
    assert score(comps, exs) == pytest.approx(3 / 8)
    assert extract_answer("x\n#### sun dog cat\n") == "sun dog cat"
    assert extract_answer("no answer") is None
    with pytest.raises(ValueError):
        score(comps[:2], exs)


class _Oracle(torch.nn.Module):
    """A fake causal LM whose greedy output is a scripted completion for each prompt."""

    def __init__(self, tok, script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.script = tok, script

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        rows = []
        for ids, m in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tok.decode([i for i, k in zip(ids, m) if k], skip_special_tokens=True)
            new = self.tok.encode(self.script[prompt], add_special_tokens=False) + [self.tok.eos_token_id]
            new += self.tok.encode("#### junk after eos", add_special_tokens=False)
            rows.append(ids + new[:max_new_tokens])
        width = max(map(len, rows))
        return torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])


def test_evaluate_scores_a_scripted_model():
    """evaluate() end to end without a trained model: prompts in, completions cut at </s>."""
    tok = build_tokenizer("char")
    exs = TASKS["format"].examples(10, seed=1234, split="eval")
    script = {ex.prompt: ex.target if i % 2 == 0 else "#### wrong" for i, ex in enumerate(exs)}
    model = _Oracle(tok, script)
    acc, details = evaluate(model, "format", n=10, seed=1234, tokenizer=tok, batch_size=4, return_details=True)
    assert acc == pytest.approx(0.5)
    assert [ex for ex, _ in details] == exs
    assert all("junk" not in c for _, c in details)


def test_finetune_refuses_a_base_of_another_architecture(zoo):
    wider = replace(PRESETS["tiny"], name="wider", hidden=96)
    with pytest.raises(ValueError, match="architecture"):
        build_finetune(zoo["base"], zoo["out"], "arith", wider, seed=0, quiet=True)
