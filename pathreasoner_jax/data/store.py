"""Readers of a prepared corpus (`prep/`): manifest, slide store, sample store, entities.

`SampleSource(prep_dir, split)` is a grain `RandomAccessDataSource` (len + getitem,
picklable for grain worker processes): `grain.MapDataset.source(SampleSource(...))`.
`SlideStore(prep_dir)[slide_id]` returns a `SlideRecord` by random access through the
manifest's slide index; a large slide's features stay on disk in strided chunks until a
batch indexes the rows it keeps (`data/slide_chunks.py`). `load_entities(prep_dir)` reads the KG lexicon written by
`prepare`, so rewards and metrics never import `data_prep`.
"""
from __future__ import annotations

import json
import os
import numpy as np

from pathreasoner_jax.records import SPLITS, SampleRecord, SlideRecord, decode_sample, decode_slide


def load_manifest(prep_dir: str) -> dict:
    path = os.path.join(prep_dir, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no prepared corpus here (run `pathreasoner prepare` first)")
    with open(path) as f:
        return json.load(f)


def _reader(path: str):
    from array_record.python.array_record_module import ArrayRecordReader
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: shard listed in the manifest is missing")
    return ArrayRecordReader(path, "readahead_buffer_size:0")


def read_shard_record(path: str, row: int, kind: str = "sample"):
    """One record; a chunked slide's features are read in full here (use SlideStore to
    read only the rows a batch keeps)."""
    r = _reader(path)
    try:
        data = r.read([row])[0]
        if kind != "slide":
            return decode_sample(data)
        rec = decode_slide(data, r.read, row, where=path)
        if getattr(rec.features, "lazy", False):
            rec.features = np.asarray(rec.features)
        return rec
    finally:
        r.close()


def iter_samples_from_shards(prep_dir: str, names: list[str]):
    for name in names:
        r = _reader(os.path.join(prep_dir, name))
        try:
            for data in r.read_all():
                yield decode_sample(data)
        finally:
            r.close()


class SampleSource:
    """grain RandomAccessDataSource over one split's sample shards → SampleRecord."""

    def __init__(self, prep_dir: str, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} not in {SPLITS}")
        self.prep_dir, self.split = prep_dir, split
        m = load_manifest(prep_dir)
        self._paths = [os.path.join(prep_dir, s["path"]) for s in m["shards"]["samples"][split] if s["records"]]
        self._counts = [s["records"] for s in m["shards"]["samples"][split] if s["records"]]
        self._source = None

    def _src(self):
        if self._source is None:
            import grain
            self._source = grain.sources.ArrayRecordDataSource(self._paths) if self._paths else []
        return self._source

    def __len__(self) -> int:
        return int(sum(self._counts))

    def __getitem__(self, index: int) -> SampleRecord:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"sample {index} out of range ({len(self)} in {self.split})")
        return decode_sample(self._src()[int(index)])

    def __getstate__(self):  # grain workers: reopen the files in the child process
        d = dict(self.__dict__)
        d["_source"] = None
        return d

    def __repr__(self) -> str:
        return f"SampleSource({self.prep_dir!r}, {self.split!r}, n={len(self)})"


class SlideStore:
    """Random access by slide id over the slide shards (index from the manifest)."""

    def __init__(self, prep_dir: str):
        self.prep_dir = prep_dir
        m = load_manifest(prep_dir)
        self._shards = [os.path.join(prep_dir, s["path"]) for s in m["shards"]["slides"]]
        self._index = {k: tuple(v) for k, v in m["slide_index"].items()}
        self._readers: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, slide_id: str) -> bool:
        return slide_id in self._index

    def ids(self) -> list[str]:
        return sorted(self._index)

    def __getitem__(self, slide_id: str) -> SlideRecord:
        if slide_id not in self._index:
            raise KeyError(f"slide {slide_id!r} is not in the slide store of {self.prep_dir}")
        shard, row = self._index[slide_id]
        if shard not in self._readers:
            self._readers[shard] = _reader(self._shards[shard])
        reader = self._readers[shard]
        return decode_slide(reader.read([row])[0], reader.read, row, where=self._shards[shard])

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_readers"] = {}
        return d


class Entities(dict):
    """The entities.json mapping as loaded ({"entities": [...], "similarity": [[i, j, s]]}),
    plus helpers: names/types/synonyms by index, `sim(i, j)` (symmetric, 1 on the
    diagonal, 0 for pairs further than the KG distance cut-off), `near(G)` (the sparse
    KG neighbourhood of a ground-truth set) and `context` (those padded for a batch).
    No dense (E, E) matrix: a PrimeKG lexicon has ~10⁵ entities."""

    def __init__(self, data: dict):
        super().__init__(data)
        ents = self["entities"]
        self.names = [e["name"] for e in ents]
        self.types = [e.get("type", "") for e in ents]
        self.synonyms = [list(e.get("synonyms", [])) for e in ents]
        self.adjacent: dict[int, dict[int, float]] = {}
        for i, j, s in self.get("similarity", []):
            i, j, s = int(i), int(j), float(s)
            if i != j and s > 0:
                self.adjacent.setdefault(i, {})[j] = s
                self.adjacent.setdefault(j, {})[i] = s

    @property
    def index(self) -> dict[str, int]:
        """lower-case name or synonym → entity index (first wins); built once."""
        if getattr(self, "_index", None) is None:
            out: dict[str, int] = {}
            for i, (n, syn) in enumerate(zip(self.names, self.synonyms)):
                for s in [n, *syn]:
                    out.setdefault(s.lower(), i)
            self._index = out
        return self._index

    def sim(self, i: int, j: int) -> float:
        return 1.0 if i == j else self.adjacent.get(i, {}).get(j, 0.0)

    def near(self, gt) -> list[tuple[int, float]]:
        """[(e, max_{g∈G} sim(e, g))] for every e ∉ G with a positive similarity to G,
        most similar first (ties by index)."""
        g = set(gt)
        best: dict[int, float] = {}
        for i in g:
            for j, s in self.adjacent.get(i, {}).items():
                if j not in g and s > best.get(j, 0.0):
                    best[j] = s
        return sorted(best.items(), key=lambda t: (-t[1], t[0]))

    def context(self, gt_sets, k: int, m: int) -> dict:
        """Per row the reward's entity context (`grpo.rewards.entity_dice`): "gt_ids" (n, k)
        int32 and "near_ids"/"near_sim" (n, m), −1/0 padded. A row with more than m
        neighbours keeps the m most similar (the soft term then under-counts the rest);
        more than k ground-truth entities is an error (it would change |G|)."""
        n = len(gt_sets)
        out = {"gt_ids": np.full((n, k), -1, np.int32), "near_ids": np.full((n, m), -1, np.int32),
               "near_sim": np.zeros((n, m), np.float32)}
        for r, g in enumerate(gt_sets):
            g = sorted(set(g))
            if len(g) > k:
                raise ValueError(f"row {r}: {len(g)} ground-truth entities, more than the context's {k}")
            out["gt_ids"][r, :len(g)] = g
            near = self.near(g)[:m]
            if near:
                out["near_ids"][r, :len(near)], out["near_sim"][r, :len(near)] = zip(*near)
        return out


def load_entities(prep_dir: str) -> Entities:
    """entities.json of a prepared corpus (see `data_prep.entities` for the format)."""
    path = os.path.join(prep_dir, "entities.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no entity lexicon (run `pathreasoner prepare` first)")
    with open(path) as f:
        return Entities(json.load(f))
