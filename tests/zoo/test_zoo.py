"""The model zoo: real tiny Llama models trained here (~40 s for the module on 2 busy CPU cores)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from deltapack.zoo import (  # noqa: E402
    PRESETS,
    TASKS,
    Preset,
    Example,
    build_base,
    build_finetune,
    delta_stats,
    evaluate,
    extract_answer,
    is_correct,
    read_stamp,
    score,
    split_of,
)
from deltapack.zoo.tokenizer import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def zoo(zoo_pair):
    """The tiny preset's base and its arith fine-tune (seed 0): the session's shared pair from
    tests/conftest.py, built once (~33 s) by build_base / build_finetune."""
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
    """The base has seen worked problems (it is partly there); the fine-tune is reliable."""
    base_acc = evaluate(zoo["base"], "arith", n=100)
    ft_acc = evaluate(zoo["ft"], "arith", n=100)
    assert 0.05 <= base_acc <= 0.6, base_acc
    assert ft_acc >= 0.8, ft_acc
    assert ft_acc >= base_acc + 0.3, (base_acc, ft_acc)


def test_batched_generation_matches_one_by_one(zoo):
    """Left padding must not change greedy answers."""
    a1, d1 = evaluate(zoo["ft"], "arith", n=16, batch_size=1, return_details=True)
    a2, d2 = evaluate(zoo["ft"], "arith", n=16, batch_size=16, return_details=True)
    assert [c for _, c in d1] == [c for _, c in d2]
    assert a1 == a2


def test_delta_is_nontrivial_and_finetune_like(zoo):
    """Every matrix moves, but gently: a fine-tune sharpens a base that already has the skill,
    it does not rewrite it (the first zoo's fine-tunes moved the projections by 0.3-0.4)."""
    stats = delta_stats(zoo["base"], zoo["ft"])
    linears = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for kind in (*linears, "lm_head", "embed_tokens"):
        assert stats[kind]["rel"] > 0.01, (kind, stats[kind])
        assert stats[kind]["min_rel"] > 0.005, (kind, stats[kind])
    for kind in (*linears, "lm_head"):
        assert stats[kind]["changed"] > 0.99, (kind, stats[kind])
    for kind in linears:
        assert stats[kind]["rel"] < 0.15, (kind, stats[kind])
    assert stats["lm_head"]["rel"] < 0.3 and stats["embed_tokens"]["rel"] < 0.1


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

HARD = PRESETS["gpu"].difficulty


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("level", ["tiny", "gpu"])
def test_task_generators_are_deterministic_and_splits_disjoint(name, level):
    task = TASKS[name]
    kw = PRESETS[level].difficulty[name]
    assert task.examples(50, seed=3, split="train", **kw) == task.examples(50, seed=3, split="train", **kw)
    assert task.examples(50, seed=3, split="eval", **kw) == task.examples(50, seed=3, split="eval", **kw)
    assert task.examples(50, seed=3, split="eval", **kw) != task.examples(50, seed=4, split="eval", **kw)
    assert task.examples(50, seed=3, split="train", stream="pretrain", **kw) != task.examples(50, seed=3, split="train", **kw)
    train = {ex.key for ex in task.examples(3000, seed=0, split="train", **kw)}
    evals = task.examples(500, seed=0, split="eval", **kw) + task.examples(500, seed=1234, split="eval", **kw)
    assert train and evals and not (train & {ex.key for ex in evals})
    assert all(split_of(ex.key) == "eval" for ex in evals)
    for ex in task.examples(100, seed=0, split="train", **kw):
        assert "####" not in ex.prompt and "####" not in ex.alt
        assert extract_answer(ex.target) == ex.answer  # the target ends in its own answer
        assert ex.answer in ex.alt  # the other surface form works the same problem out


@pytest.mark.parametrize("name", sorted(TASKS))
def test_difficulty_knobs_change_the_problems(name):
    easy = TASKS[name].examples(200, seed=0, **PRESETS["tiny"].difficulty[name])
    harder = TASKS[name].examples(200, seed=0, **HARD[name])
    assert sum(len(e.prompt) for e in harder) > sum(len(e.prompt) for e in easy)
    assert sum(len(e.target) for e in harder) >= sum(len(e.target) for e in easy)


def _steps(target: str) -> list[tuple[int, str, int, int]]:
    """The (a, op, b, result) steps of an arith chain of thought."""
    out = []
    for step in target.split("####")[0].strip().rstrip(".").split(";"):
        lhs, r = step.strip().split("=")
        op = next(c for c in "+-*" if c in lhs)
        a, b = lhs.split(op)
        out.append((int(a), op, int(b), int(r)))
    return out


def test_arith_answers_and_chains_are_right():
    for kw in (PRESETS["tiny"].difficulty["arith"], PRESETS["small"].difficulty["arith"], HARD["arith"]):
        for ex in TASKS["arith"].examples(200, seed=0, **kw):
            expr = ex.problem or ex.prompt.removeprefix("Q: ").removesuffix("=? A:")
            assert str(eval(expr)) == ex.answer, ex
            steps = _steps(ex.target)
            assert kw.get("min_ops", kw["n_ops"]) <= len(steps) <= kw["n_ops"]
            for i, (a, op, b, r) in enumerate(steps):
                assert r == {"+": a + b, "-": a - b, "*": a * b}[op] and r >= 0, ex
                assert i == 0 or a == steps[i - 1][3]
            assert str(steps[-1][3]) == ex.answer
            if kw.get("words"):  # the story states the start and every operand
                assert ex.prompt.startswith("Q: ") and ex.prompt.endswith(" A:") and "?" in ex.prompt
                nums = [int(x) for x in re.findall(r"\d+", ex.prompt)]
                assert nums == [steps[0][0]] + [b for _, _, b, _ in steps], ex


def test_code_answers_are_right():
    import contextlib
    import io

    seen_if = seen_for = False
    for kw in (PRESETS["tiny"].difficulty["code"], HARD["code"]):
        for ex in TASKS["code"].examples(300, seed=0, **kw):
            buf = io.StringIO()
            env: dict = {}
            with contextlib.redirect_stdout(buf):
                exec(ex.prompt, env)
            assert buf.getvalue().strip() == ex.answer, ex
            assert all(0 <= v <= 999 for k, v in env.items() if k in "abcdxyz"), ex
            seen_if |= "if " in ex.prompt
            seen_for |= "for i in range(" in ex.prompt
    assert seen_if and seen_for


_REF_OPS = {  # written independently of tasks.FORMAT_OPS
    "reverse": lambda ws: list(reversed(ws)),
    "sort": lambda ws: sorted(ws),
    "upper": lambda ws: [w.upper() for w in ws],
    "title": lambda ws: [w.capitalize() for w in ws],
    "drop_first": lambda ws: ws[1:],
    "drop_last": lambda ws: ws[:-1],
}


def test_format_answers_are_right():
    from deltapack.zoo.tasks import FORMAT_OPS

    terse = {v[1]: k for k, v in FORMAT_OPS.items()}
    phrase = {p: k for k, v in FORMAT_OPS.items() for p in v[2]}
    for kw in (PRESETS["tiny"].difficulty["format"], HARD["format"]):
        for ex in TASKS["format"].examples(300, seed=0, **kw):
            if ex.prompt.startswith("Instruction: "):
                head, words = ex.prompt.removeprefix("Instruction: ").split(".\nInput: ")
                names = [phrase[p[:1].lower() + p[1:]] for p in head.split(", then ")]  # the first is capitalised
            else:
                head, words = ex.prompt.strip().split(": ")
                names = [terse[n] for n in head.split(", ")]
            assert len(names) == kw.get("n_steps", 1) and len(set(names)) == len(names)
            ws, sep = words.split(), " "
            for n in names:
                if n == "commas":
                    sep = ", "
                else:
                    ws = _REF_OPS[n](ws)
            assert ex.answer == sep.join(ws), ex
            assert "commas" not in names[:-1]


def test_base_corpus_holds_worked_train_problems_and_no_eval_problem():
    from deltapack.zoo.corpus import base_corpus

    p = PRESETS["tiny"]
    docs = base_corpus(60_000, p.synth_frac, digits=1, task_frac=p.task_frac, task_exact=p.task_exact, difficulty=p.difficulty, eval_frac=p.eval_frac)
    text = "\n".join(docs)
    assert 0.5e6 < len(text) < 0.7e6  # 60k of stdlib is 10% of the corpus
    assert text.count("####") > 1000 and text.count("Compute ") > 1000 and text.count("  # ") > 1000
    exact = text.count("####") / (text.count("####") + text.count("Compute ") + text.count("# prints ") + text.count(" | "))
    assert 0.1 < exact < 0.5  # task_exact = 0.3 of the worked problems (the synthetic copy lines add some " | ")
    for name in TASKS:
        for ex in TASKS[name].examples(300, seed=1234, split="eval", **p.difficulty[name]):
            assert ex.prompt + ex.target not in text and ex.alt not in text, ex
    with pytest.raises(ValueError):
        base_corpus(10_000, 0.5, task_frac=0.5)


def test_pretraining_problems_are_easier_where_the_preset_says_so():
    g = PRESETS["gpu"]
    pre = g.pretrain_tasks()
    assert pre["arith"]["n_ops"] < g.difficulty["arith"]["n_ops"] and pre["arith"]["words"] == g.difficulty["arith"]["words"]
    assert pre["format"]["n_steps"] == 1 < g.difficulty["format"]["n_steps"]
    assert PRESETS["tiny"].pretrain_tasks() == PRESETS["tiny"].difficulty
    assert type(g).from_dict(g.to_dict()) == g


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


def test_next_token_kl_pads_batches_like_single_sequences(zoo):
    """Right-padded batches with a mask give the per-sequence KL; a model has zero KL to itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltapack.zoo import next_token_kl

    tok = AutoTokenizer.from_pretrained(zoo["ft"])
    base = AutoModelForCausalLM.from_pretrained(zoo["base"], dtype=torch.float32).eval()
    ft = AutoModelForCausalLM.from_pretrained(zoo["ft"], dtype=torch.float32).eval()
    seqs = [torch.tensor([tok.bos_token_id] + tok.encode(e.prompt + e.target, add_special_tokens=False)) for e in TASKS["arith"].examples(7, seed=5, split="eval")]
    assert len({len(s) for s in seqs}) > 1
    batched = next_token_kl(base, ft, seqs, batch_size=4)
    tot = sum(next_token_kl(base, ft, [s]) * len(s) for s in seqs) / sum(len(s) for s in seqs)
    assert batched == pytest.approx(tot, rel=1e-4)
    assert batched > 0.01
    assert next_token_kl(ft, ft, seqs, batch_size=4) == pytest.approx(0.0, abs=1e-6)


def test_per_task_finetune_settings(tmp_path):
    micro = replace(PRESETS["tiny"], name="micro_ft", base_steps=2, ft_steps=2, ft_batch=2, corpus_chars=50_000, ft_task={"code": {"ft_steps": 3, "ft_lr": 1e-3}})
    assert micro.ft_settings("code") == (3, 2, 1e-3)
    assert micro.ft_settings("arith") == (2, 2, micro.ft_lr)
    assert Preset.from_dict(micro.to_dict()) == micro
    b = build_base(tmp_path, micro, seed=0, quiet=True)
    examples = {t: read_stamp(build_finetune(b, tmp_path, t, micro, seed=0, quiet=True))["train_examples"] for t in ("code", "arith")}
    assert examples == {"code": 6, "arith": 4}
    with pytest.raises(ValueError, match="unknown fine-tune override"):
        replace(micro, ft_task={"code": {"steps": 3}}).ft_settings("code")
