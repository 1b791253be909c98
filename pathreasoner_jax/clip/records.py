"""Image–text records and their store (Patho-CLIP), and the record-store machinery that the
Qwen2.5-VL records (vl/records.py) share.

An `ImageText` is one image (PNG bytes, any size, RGB) with its caption and, where
known, a class label. Records are msgpack maps, never pickle. A store is a folder:

    manifest.json                      written last: its presence marks a complete store
    <split>-00000.array_record ...     records of each split, group_size 1 (random access)

`write_store` writes every file under a temporary name and renames it; `ImageTextStore`
reads the manifest and gives each split as a random-access source (`len`, `[i]`).
Both are `write_record_store` / `RecordStore` with the image-text `StoreFormat` (format
name, version, codec, the command that builds one); another record type passes its own.
"""
from __future__ import annotations

import bisect
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import msgpack

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import write_array_record, write_json

FORMAT = "pathreasoner-image-text"
FORMAT_VERSION = 1
RECORDS_PER_SHARD = 4096  # a demo tile is ~5 KB and a Quilt image ~0.1-1 MB: shards stay ≤ a few GB
WRITER_OPTIONS = "group_size:1"  # one record per chunk: reading record i decodes only record i


@dataclass
class ImageText:
    """image_png: PNG bytes; label: class index (-1: none); class_name: the human-readable
    class ("" : none); source: where it came from ("demo-007.tiff@1024,512", a file path)."""
    image_png: bytes = field(repr=False)  # kept out of repr: a record prints as its caption and source
    caption: str
    label: int = -1
    class_name: str = ""
    source: str = ""


def clip_data_dir(cfg) -> str:
    """Where `clip-data` writes the store: clip.data_dir, else <run_dir>/clip_data."""
    from pathreasoner_jax.run_layout import RunLayout
    return RunLayout(cfg).clip_data_dir


def clip_tokenizer_path(cfg) -> str:
    """clip.tokenizer_path, else hf_path (its tokenizer), else the one clip-data trained."""
    return cfg.clip.tokenizer_path or cfg.clip.hf_path or os.path.join(clip_data_dir(cfg), "tokenizer")


def encode(rec: ImageText) -> bytes:
    return msgpack.packb({"v": FORMAT_VERSION, "image_png": bytes(rec.image_png), "caption": str(rec.caption),
                          "label": int(rec.label), "class_name": str(rec.class_name), "source": str(rec.source)},
                         use_bin_type=True)


def decode(data: bytes) -> ImageText:
    d = msgpack.unpackb(data, raw=False)
    if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION or "image_png" not in d:
        raise ValueError(f"not an image-text record of format version {FORMAT_VERSION}")
    return ImageText(image_png=d["image_png"], caption=d["caption"], label=int(d.get("label", -1)),
                     class_name=d.get("class_name", ""), source=d.get("source", ""))


def write_records(path: str, records: Iterable[bytes]) -> dict:
    """Writes encoded records to one array_record file atomically → {"path", "records", "sha256"}."""
    return write_array_record(path, records, WRITER_OPTIONS)


@dataclass(frozen=True)
class StoreFormat:
    """What tells one record store from another: the manifest's `format` name and `version`,
    the record codec, and for messages the store's label and the command that (re)builds it.
    Module-level functions as encode/decode keep a SplitSource picklable."""
    name: str
    version: int
    label: str  # "image-text": "no image-text store here"
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    build: str  # "run `pathreasoner clip-data` to build it"
    rebuild: str  # "rebuild with `pathreasoner clip-data --force`"


IMAGE_TEXT = StoreFormat(FORMAT, FORMAT_VERSION, "image-text", encode, decode,
                         "run `pathreasoner clip-data` to build it", "rebuild with `pathreasoner clip-data --force`")


def _chunks(items: Iterable, size: int, encode_fn: Callable[[Any], bytes]):
    buf = []
    for rec in items:
        buf.append(encode_fn(rec))
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def write_record_store(out_dir: str, splits: dict[str, Iterable], fmt: StoreFormat,
                       fields: dict | Callable[[], dict] | None = None,
                       records_per_shard: int = RECORDS_PER_SHARD) -> dict:
    """Writes the splits' records (`fmt.encode`) and then manifest.json; → the manifest:
    {"format", "version", "counts": {split: n}, "splits": {split: {"count", "shards"}}} plus
    `fields` (a callable is called once every record is written: fields counted on the way).

    An older manifest is removed first (a crash half-way leaves no manifest, so readers
    refuse the folder), and shards of an earlier store that this one does not list are
    deleted at the end. An empty split is listed with no shards."""
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    out_splits = {}
    for name, items in splits.items():
        if not name or "/" in name or os.sep in name:
            raise ValueError(f"split name {name!r} cannot be a file name prefix")
        shards = [write_records(os.path.join(out_dir, f"{name}-{k:05d}.array_record"), chunk)
                  for k, chunk in enumerate(_chunks(items, records_per_shard, fmt.encode))]
        out_splits[name] = {"count": sum(s["records"] for s in shards), "shards": shards}
    extra = fields() if callable(fields) else dict(fields or {})
    manifest = {**extra, "format": fmt.name, "version": fmt.version,
                "counts": {k: v["count"] for k, v in out_splits.items()}, "splits": out_splits}
    write_json(manifest_path, manifest)
    keep = {s["path"] for v in out_splits.values() for s in v["shards"]}
    for p in glob.glob(os.path.join(glob.escape(out_dir), "*.array_record")):
        if os.path.basename(p) not in keep:
            os.remove(p)
    return manifest


def write_store(out_dir: str, splits: dict[str, Iterable[ImageText]], class_names: list[str],
                extra_meta: dict | None = None, records_per_shard: int = RECORDS_PER_SHARD) -> dict:
    """The image-text store (`write_record_store`); the manifest adds class_names and meta."""
    return write_record_store(out_dir, splits, IMAGE_TEXT,
                              {"class_names": list(class_names), "meta": dict(extra_meta or {})}, records_per_shard)


def read_manifest(data_dir: str, fmt: StoreFormat) -> dict:
    """manifest.json of a complete store of format `fmt`; UserError when it is missing,
    unreadable, of another format or of another version."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.isfile(path):
        raise UserError(f"{data_dir}: no {fmt.label} store here (manifest.json missing; {fmt.build})")
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable manifest ({' '.join(str(e).split())}; {fmt.build})") from None
    if not isinstance(m, dict) or m.get("format") != fmt.name or not isinstance(m.get("splits"), dict):
        raise UserError(f"{path}: not a manifest of the {fmt.label} store format ({fmt.build})")
    if m.get("version") != fmt.version:
        raise UserError(f"{path}: store format version {m.get('version')!r}, this code reads "
                        f"{fmt.version} ({fmt.rebuild})")
    return m


def load_manifest(data_dir: str) -> dict:
    return read_manifest(data_dir, IMAGE_TEXT)


class SplitSource:
    """One split: `len()` and `[i] → record` (`fmt.decode`: ImageText by default) by random
    access over its shards. Picklable (readers are reopened lazily in another process)."""

    def __init__(self, data_dir: str, name: str, shards: list[dict], fmt: StoreFormat = IMAGE_TEXT):
        self.data_dir, self.name, self.fmt = data_dir, name, fmt
        self._paths = [os.path.join(data_dir, s["path"]) for s in shards if s["records"]]
        counts = [int(s["records"]) for s in shards if s["records"]]
        self._starts = [sum(counts[:k]) for k in range(len(counts) + 1)]
        self._readers: dict[int, object] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _reader(self, k: int):
        if k not in self._readers:
            from array_record.python.array_record_module import ArrayRecordReader
            if not os.path.isfile(self._paths[k]):
                raise UserError(f"{self._paths[k]}: shard listed in the manifest is missing ({self.fmt.rebuild})")
            self._readers[k] = ArrayRecordReader(self._paths[k], "readahead_buffer_size:0")
        return self._readers[k]

    def __getitem__(self, index: int):
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"record {index} out of range ({len(self)} in split {self.name!r})")
        k = bisect.bisect_right(self._starts, i) - 1
        data = self._reader(k).read([i - self._starts[k]])[0]
        try:
            return self.fmt.decode(data)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise UserError(f"{self._paths[k]}: record {i - self._starts[k]} is corrupt ({e})") from None

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_readers"] = {}
        return d

    def __repr__(self) -> str:
        return f"SplitSource({self.data_dir!r}, {self.name!r}, n={len(self)})"


class RecordStore:
    """A complete store of format `fmt` in `data_dir`: `.manifest`, `.counts`, `.meta`,
    `.splits()`, `.split(name)` → SplitSource."""

    def __init__(self, data_dir: str, fmt: StoreFormat):
        self.data_dir, self.fmt = data_dir, fmt
        self.manifest = read_manifest(data_dir, fmt)
        self.counts: dict[str, int] = {k: int(v["count"]) for k, v in self.manifest["splits"].items()}
        self.meta: dict = dict(self.manifest.get("meta", {}))

    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> SplitSource:
        if name not in self.manifest["splits"]:
            raise UserError(f"{self.data_dir}: no split {name!r} in the {self.fmt.label} store "
                            f"(it has {', '.join(self.splits()) or 'none'})")
        return SplitSource(self.data_dir, name, self.manifest["splits"][name]["shards"], self.fmt)


class ImageTextStore(RecordStore):
    """The image-text store in `data_dir`: `.class_names`, `.counts`, `.meta`, `.split(name)`."""

    def __init__(self, data_dir: str):
        super().__init__(data_dir, IMAGE_TEXT)
        self.class_names: list[str] = list(self.manifest.get("class_names", []))
