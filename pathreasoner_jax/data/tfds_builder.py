"""A tensorflow_datasets builder over a prepared corpus's sample store.

    from pathreasoner_jax.data.tfds_builder import build_tfds
    data_dir = build_tfds("runs/demo/prep")                      # once
    ds = tfds.data_source("path_reasoner_samples", data_dir=data_dir, split="train")
    ds[0]["question"], ds[0]["findings"], ...

Works without TensorFlow: tfds ≥ 4.9 writes and reads ArrayRecord files with its
vendored tf.Example protos and a numpy parser (checked: `import tensorflow_datasets`,
`download_and_prepare` and `tfds.data_source` all run with tensorflow absent).

Why a copy: tfds reads only records serialised as tf.Example under its own feature
spec and directory layout, while our shards hold msgpack records (SPEC: no pickle,
shared schema with the slide store). So `download_and_prepare` re-encodes the sample
store (text only, small) into `<prep>/tfds/path_reasoner_samples/1.0.0/`. The slide
store (large float arrays) is not duplicated: read it with `SlideStore`. The grain
`SampleSource` stays the main training path; tfds may shuffle record order at write
time, so index i in tfds and in `SampleSource` are not the same sample (use sample_id).
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from pathreasoner_jax.data.store import SampleSource, load_manifest
from pathreasoner_jax.records import SPLITS

NAME = "path_reasoner_samples"


class PathReasonerSamples(tfds.core.GeneratorBasedBuilder):
    """Sample store of one `prep/` directory as a tfds dataset (splits train/val/test)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sample records of the PathReasoner-JAX prepare step."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds' default probes `importlib_resources` (a backport we do not install) for
        # editable installs; the module file is all it needs
        from etils import epath
        return epath.Path(__file__)

    def __init__(self, *, prep_dir: str = "", **kwargs):
        self._prep_dir = prep_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        seq = tfds.features.Sequence(tfds.features.Text())
        return tfds.core.DatasetInfo(
            builder=self,
            description="KG-grounded reasoning trajectories about whole-slide images.",
            features=tfds.features.FeaturesDict({
                "sample_id": text, "slide_id": text, "question": text, "findings": seq, "reasoning": seq,
                "answer": text, "diagnosis": text, "entities": seq, "category": text, "trajectory": text}))

    def _split_generators(self, dl_manager):
        if not self._prep_dir:
            raise ValueError("PathReasonerSamples needs prep_dir= to prepare")
        m = load_manifest(self._prep_dir)
        return {sp: self._generate_examples(sp) for sp in SPLITS if m["samples"].get(sp, 0) > 0}

    def _generate_examples(self, split):
        src = SampleSource(self._prep_dir, split)
        for i in range(len(src)):
            s = src[i]
            yield s.sample_id, {"sample_id": s.sample_id, "slide_id": s.slide_id, "question": s.question,
                                "findings": s.findings, "reasoning": s.reasoning, "answer": s.answer,
                                "diagnosis": s.diagnosis, "entities": s.entities, "category": s.category,
                                "trajectory": s.trajectory}


def build_tfds(prep_dir: str, data_dir: str = "") -> str:
    """Prepares the tfds copy (if absent) and returns its data_dir."""
    data_dir = data_dir or os.path.join(prep_dir, "tfds")
    builder = PathReasonerSamples(prep_dir=prep_dir, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return data_dir


def tfds_source(prep_dir: str, split: str = "train", data_dir: str = ""):
    """`tfds.data_source` over the prepared corpus (building the tfds copy first if needed)."""
    data_dir = build_tfds(prep_dir, data_dir)
    return tfds.data_source(NAME, data_dir=data_dir, split=split)
