"""The TFDS catalog datasets (``mmjax.data.catalog``) on tiny array_record fixtures, without network.

``tfds.testing.mock_data`` cannot serve these: without TensorFlow its data sources cannot return an image's
encoded bytes (``SkipDecoding`` re-encodes a random array with TF), and it bypasses the data dir that the
catalog's checks read. So each dataset is written here in its real TFDS layout: its features as TFDS's own
builder declares them (COCO's, whose builder needs TensorFlow, as ``coco.py`` declares them), a few
generated examples serialized by those features into ``NAME-SPLIT.array_record-00000-of-00001`` shards,
and TFDS's metadata, under ``DATA_DIR/NAME[/CONFIG]/VERSION``, as ``tfds build`` lays it out.
"""

import io
import json
import os
import pickle

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from mmjax.config import DataError
from mmjax.data import catalog, loaders, pipeline, transforms
from mmjax.data.tokenizer import ByteTokenizer

# The real TFDS splits (TFDS 4.9.10's builders) and how many classes TFDS declares.
TFDS_SPLITS = {
    "coco_captions": ("train", "val", "test", "restval"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "imagenet2012": ("train", "validation"),
    "imagenet_v2": ("test",),
    "food101": ("train", "validation"),
    "oxford_iiit_pet": ("train", "test"),
    "caltech101": ("train", "test"),
}
NUM_CLASSES = {
    "coco_captions": 0,
    "cifar10": 10,
    "cifar100": 100,
    "imagenet2012": 1000,
    "imagenet_v2": 1000,
    "food101": 101,
    "oxford_iiit_pet": 37,
    "caltech101": 102,
}


def _coco_captions_features():
    """coco_captions' features, as tensorflow_datasets/object_detection/coco{,_captions}.py declare them
    (its builder cannot be made without TensorFlow: its ``_info`` names ``tf.int64``)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence(
                {
                    "id": np.int64,
                    "area": np.int64,
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(num_classes=80),
                    "is_crowd": np.bool_,
                }
            ),
            "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
        }
    )


def _encoded_image(feature, i: int) -> bytes:
    """An image of ``feature``'s shape (any height and width where it has none), in its encoding."""
    height, width, channels = feature.shape
    height, width = height or 20 + i, width or 28 - i
    pixels = (np.arange(height * width * channels).reshape(height, width, channels) * (i + 3)) % 256
    pixels = pixels.astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if feature.encoding_format == "jpeg" else "PNG")
    return buffer.getvalue()


def _value(feature, i: int):
    """A value of ``feature`` for example ``i`` (the specific features first: they are Tensors too)."""
    if isinstance(feature, tfds.features.Image):
        return _encoded_image(feature, i)
    if isinstance(feature, tfds.features.ClassLabel):
        return (7 * i + 1) % feature.num_classes
    if isinstance(feature, tfds.features.Text):
        return f"file_{i}.jpg"
    if isinstance(feature, tfds.features.BBoxFeature):
        return tfds.features.BBox(0.1, 0.2, 0.6, 0.7)
    if isinstance(feature, tfds.features.Sequence):
        return [_value(feature.feature, 10 * i + j) for j in range(2)]
    if isinstance(feature, tfds.features.FeaturesDict):
        return {key: _value(f, i) for key, f in feature.items()}
    if feature.np_dtype == np.bool_:
        return False
    if np.dtype(feature.np_dtype).kind in "OSU":
        return f"caption {i % 10} of image {i // 10}"
    return i


def _builder_dir_and_features(root: str, name: str, label_names=None):
    if name == "coco_captions":
        config = tfds.builder_cls(name).BUILDER_CONFIGS[0]
        return os.path.join(root, name, config.name, str(config.version)), _coco_captions_features()
    builder = tfds.builder(name, data_dir=root)  # TFDS's own builder: its features, config and version
    features = builder.info.features
    names = label_names or catalog.CATALOG[name].label_names
    if names is not None and features["label"].names[0] == "0":  # CIFAR's names come with the download
        features["label"].names = list(names)
    return os.fspath(builder.data_dir), features


def write_dataset(
    root: str, name: str, sizes: dict, file_format: str = "array_record", label_names=None
) -> str:
    """Write catalog dataset ``name`` with ``sizes[split]`` generated examples per TFDS split into data dir
    ``root``, as ``tfds build`` would; returns the dataset's directory. A tfrecord dataset gets empty shards
    (only its metadata is read before the catalog refuses it)."""
    builder_dir, features = _builder_dir_and_features(root, name, label_names)
    os.makedirs(builder_dir, exist_ok=True)
    split_infos = []
    for split, n in sizes.items():
        path = os.path.join(builder_dir, f"{name}-{split}.{file_format}-00000-of-00001")
        if file_format == "array_record":
            writer = ArrayRecordWriter(path, "group_size:1")
            for i in range(n):
                writer.write(features.serialize_example({k: _value(f, i) for k, f in features.items()}))
            writer.close()
        else:
            open(path, "wb").close()
        split_infos.append(
            tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=os.path.getsize(path))
        )
    tfds.folder_dataset.write_metadata(
        data_dir=builder_dir, features=features, split_infos=split_infos, check_data=False
    )
    return builder_dir


def _sizes(name: str) -> dict:
    return {split: 4 if k == 0 else 3 for k, split in enumerate(TFDS_SPLITS[name])}


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory):
    """A data dir holding every catalog dataset, 4 examples in its first split, 3 in the others."""
    root = str(tmp_path_factory.mktemp("catalog"))
    for name in catalog.NAMES:
        write_dataset(root, name, _sizes(name))
    return root


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test: what it registers is gone afterwards."""
    from mmjax.data import registry

    datasets = dict(registry.DATASETS)
    monkeypatch.setattr(registry, "DATASETS", datasets)
    monkeypatch.setattr(pipeline, "DATASETS", datasets)  # the re-export names the same dict
    return registry


def _cfg(name: str, data_dir, **overrides):
    fields = dict(name=name, data_dir=data_dir, image_size=32, max_len=16, normalization="minus_one_one")
    return ml_collections.ConfigDict({**fields, **overrides})


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ the catalog


def test_names_and_datasets():
    assert catalog.NAMES == tuple(TFDS_SPLITS)
    for name in catalog.NAMES:
        dataset = getattr(catalog, name.upper())
        assert isinstance(dataset, pipeline.Dataset)
        spec = catalog.CATALOG[name]
        assert dataset.splits == spec.split_names
        assert tuple(spec.tfds_split(s) for s in dataset.splits) == TFDS_SPLITS[name]
    assert catalog.COCO_CAPTIONS.splits == ("train", "validation", "test", "restval")
    assert catalog.IMAGENET2012.splits == ("train", "validation")
    assert catalog.IMAGENET_V2.splits == ("test",)


def test_registered_by_import_path(registry):
    """What registry.py registers for each name: the module attribute, imported on first use."""
    for name in catalog.NAMES:
        registry.register_dataset(name, f"mmjax.data.catalog:{name.upper()}")
        assert registry.get_dataset(name) is getattr(catalog, name.upper())
        assert len(registry.class_names(_cfg(name, None))) == NUM_CLASSES[name]


@pytest.mark.parametrize("name", catalog.NAMES)
def test_class_names_and_templates(name):
    dataset = getattr(catalog, name.upper())
    names, templates = dataset.class_names(None), dataset.prompt_templates(None)
    assert len(names) == NUM_CLASSES[name]
    # as published: ImageNet's near-duplicate synsets share a name (657/744 missile, 836/837 sunglasses)
    assert len(set(names)) == len(names) - (2 if name.startswith("imagenet") else 0)
    assert all(isinstance(n, str) and n.strip() == n and n for n in names)
    assert templates and all(t.count("{}") == 1 for t in templates)
    for template in templates:
        prompt = template.format(names[0] if names else "dog")
        assert "{" not in prompt and (names[0] if names else "dog") in prompt
    if name != "coco_captions":
        caption = catalog.CATALOG[name].caption
        assert caption in templates and caption.count("{}") == 1


def test_class_name_lists():
    """Spot checks against the published lists (CLIP's prompts.md and ImageNet notebook)."""
    assert catalog.CIFAR10.class_names(None)[:3] == ["airplane", "automobile", "bird"]
    imagenet = catalog.IMAGENET2012.class_names(None)
    assert imagenet[0] == "tench" and imagenet[1] == "goldfish" and imagenet[-1] == "toilet paper"
    assert catalog.IMAGENET_V2.class_names(None) == imagenet
    assert len(catalog.IMAGENET2012.prompt_templates(None)) == 80
    assert catalog.IMAGENET2012.prompt_templates(None)[0] == "a bad photo of a {}."
    assert len(catalog.CIFAR100.prompt_templates(None)) == 18
    assert len(catalog.CALTECH101.prompt_templates(None)) == 34
    assert catalog.FOOD101.prompt_templates(None) == ["a photo of {}, a type of food."]
    assert catalog.OXFORD_IIIT_PET.prompt_templates(None) == ["a photo of a {}, a type of pet."]
    assert catalog.COCO_CAPTIONS.class_names(None) == []


def test_label_order_is_tfds(tmp_path):
    """The class names follow TFDS's label ids: TFDS's builders (this TFDS) declare the label names that
    the lists were aligned to; CIFAR-100's fine labels are sorted; ImageNet's ids are the sorted synsets."""
    for name in ("food101", "oxford_iiit_pet", "caltech101"):
        declared = tfds.builder(name, data_dir=str(tmp_path)).info.features["label"].names
        assert list(catalog.CATALOG[name].label_names) == declared
    pairs = zip(catalog.CATALOG["food101"].label_names, catalog.FOOD101.class_names(None))
    assert all(label.replace("_", " ") == name for label, name in pairs)
    pairs = zip(catalog.CATALOG["oxford_iiit_pet"].label_names, catalog.OXFORD_IIIT_PET.class_names(None))
    assert all(label.replace("_", " ").lower() == name.lower() for label, name in pairs)
    caltech = dict(zip(catalog.CATALOG["caltech101"].label_names, catalog.CALTECH101.class_names(None)))
    assert caltech["background_google"] == "background" and caltech["faces"] == "off-center face"
    assert caltech["faces_easy"] == "centered face" and caltech["accordion"] == "accordion"
    assert caltech["car_side"] == "side of a car" and caltech["yin_yang"] == "yin and yang symbol"
    fine = catalog.CATALOG["cifar100"].label_names
    assert list(fine) == sorted(fine) and "aquarium_fish" in fine
    synsets = tfds.builder("imagenet2012", data_dir=str(tmp_path)).info.features["label"].names
    assert len(synsets) == 1000 and synsets == sorted(synsets) and synsets[0] == "n01440764"


# ------------------------------------------------------------------------------------------ the records


@pytest.mark.parametrize("name", catalog.NAMES)
def test_records(name, catalog_dir):
    dataset, spec = getattr(catalog, name.upper()), catalog.CATALOG[name]
    names = dataset.class_names(None)
    for k, split in enumerate(dataset.splits):
        source = dataset.source(_cfg(name, catalog_dir), split)
        assert len(source) == (4 if k == 0 else 3)
        records = [source[i] for i in range(len(source))]
        for i, record in enumerate(records):
            assert set(record) == {"image", "captions", "label", "id"}
            assert isinstance(record["image"], bytes) and record["id"] == i
            image = transforms.record_image(record, split)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            captions = transforms.texts(record, "captions", split)
            assert isinstance(record["label"], np.int64)
            if name == "coco_captions":
                assert record["label"] == -1
                assert captions == [f"caption {j} of image {i}" for j in range(2)]
            else:
                assert 0 <= record["label"] < NUM_CLASSES[name]
                assert record["label"] == (7 * i + 1) % NUM_CLASSES[name]  # as written
                assert captions == [spec.caption.format(names[record["label"]])]
        if name == "cifar10":
            assert image.shape == (32, 32, 3)
        assert [r["captions"] for r in source.__getitems__([2, 0])] == [
            records[2]["captions"],
            records[0]["captions"],
        ]
        assert source[-1]["id"] == len(source) - 1
        with pytest.raises(IndexError):
            source[len(source)]


def test_caption_texts(catalog_dir):
    assert catalog.CIFAR10.source(_cfg("cifar10", catalog_dir), "test")[0]["captions"] == [
        "a photo of a automobile."
    ]
    assert catalog.FOOD101.source(_cfg("food101", catalog_dir), "train")[0]["captions"] == [
        "a photo of baby back ribs, a type of food."
    ]


def test_source_pickles(catalog_dir):
    source = catalog.CIFAR10.source(_cfg("cifar10", catalog_dir), "train")
    first = source[1]
    copy = pickle.loads(pickle.dumps(source))
    assert copy._records is None  # reopened lazily in the process that unpickles it
    assert len(copy) == len(source) and repr(copy) == repr(source)
    again = copy[1]
    assert again["image"] == first["image"] and again["captions"] == first["captions"]
    assert pickle.loads(pickle.dumps(copy))[3]["id"] == 3  # an opened source pickles too


# ------------------------------------------------------------------------------------------ the errors


def test_unknown_split(catalog_dir, registry):
    with pytest.raises(ValueError, match=r"unknown split 'validation' of cifar10; valid splits: train, test"):
        catalog.CIFAR10.source(_cfg("cifar10", catalog_dir), "validation")
    with pytest.raises(ValueError, match=r"valid splits: train, validation, test, restval"):
        catalog.COCO_CAPTIONS.source(_cfg("coco_captions", catalog_dir), "val")  # TFDS's name for it
    registry.register_dataset("cifar10", catalog.CIFAR10)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        registry.data_source(_cfg("cifar10", catalog_dir), "validation")


def test_not_prepared(tmp_path):
    with pytest.raises(DataError) as excinfo:
        catalog.CIFAR10.source(_cfg("cifar10", str(tmp_path)), "train")
    message = _one_line_error(excinfo)
    assert f"'cifar10' is not prepared in {tmp_path}" in message
    assert f"tfds build cifar10 --file_format=array_record --data_dir={tmp_path}" in message
    with pytest.raises(DataError, match="--manual_dir="):
        catalog.IMAGENET2012.source(_cfg("imagenet2012", str(tmp_path)), "train")


def test_tfrecord_only(tmp_path):
    builder_dir = write_dataset(str(tmp_path), "cifar10", {"train": 3, "test": 2}, file_format="tfrecord")
    with pytest.raises(DataError) as excinfo:
        catalog.CIFAR10.source(_cfg("cifar10", str(tmp_path)), "train")
    message = _one_line_error(excinfo)
    assert "stored as tfrecord, which has no random access" in message
    assert (
        f"tfds convert_format --dataset_version_dir={builder_dir} --out_file_format=array_record" in message
    )
    assert f"tfds build cifar10 --file_format=array_record --data_dir={tmp_path} --overwrite" in message


def test_converted_from_tfrecord(tmp_path):
    """A tfrecord dataset converted in place by ``tfds convert_format`` (array_record listed as an
    alternative file format of its dataset_info.json) is read from its array_record shards."""
    builder_dir = write_dataset(str(tmp_path), "cifar10", {"train": 3, "test": 2})
    info_path = os.path.join(builder_dir, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info.update(fileFormat="tfrecord", alternativeFileFormats=["array_record"])
    with open(info_path, "w") as f:
        json.dump(info, f)
    source = catalog.CIFAR10.source(_cfg("cifar10", str(tmp_path)), "test")
    assert len(source) == 2 and source[1]["captions"] == ["a photo of a ship."]


def test_label_names_checked(tmp_path):
    """A prepared dataset whose labels are in another order than the class names is refused."""
    shuffled = list(catalog.CATALOG["cifar10"].label_names)[::-1]
    write_dataset(str(tmp_path), "cifar10", {"train": 2, "test": 2}, label_names=shuffled)
    with pytest.raises(DataError) as excinfo:
        catalog.CIFAR10.source(_cfg("cifar10", str(tmp_path)), "train")
    assert "names label 0 'truck', not 'airplane'" in _one_line_error(excinfo)


def test_data_dir_passes_to_tfds(monkeypatch, tmp_path):
    """gs:// paths go to TFDS untouched; local ones are made absolute; None is TFDS's default."""
    from tensorflow_datasets.core import read_only_builder

    seen = []

    def not_found(name, data_dir=None, **kwargs):
        seen.append(data_dir)
        raise tfds.core.DatasetNotFoundError(f"no {name}")

    monkeypatch.setattr(read_only_builder, "builder_from_files", not_found)
    monkeypatch.chdir(tmp_path)
    for data_dir in ("gs://bucket/tfds", "relative/dir", None):
        with pytest.raises(DataError) as excinfo:
            catalog.CIFAR100.source(_cfg("cifar100", data_dir), "train")
        _one_line_error(excinfo)
    assert seen == ["gs://bucket/tfds", str(tmp_path / "relative" / "dir"), None]


# ------------------------------------------------------------------------------------------ the pipeline


def test_load_split_and_train_loader(catalog_dir, registry):
    registry.register_dataset("cifar10", catalog.CIFAR10)
    cfg = _cfg("cifar10", catalog_dir)
    data = loaders.load_split(cfg, "test", tokenizer=ByteTokenizer())
    assert data["image"].shape == (3, 32, 32, 3) and data["image"].dtype == np.float32
    assert -1.0 <= data["image"].min() and data["image"].max() <= 1.0
    assert data["text"].shape == (3, 16)
    assert list(data["label"]) == [1, 8, 5] and list(data["id"]) == [0, 1, 2]
    assert data["caption"][0] == "a photo of a automobile."
    assert data["class_names"] == catalog.CIFAR10.class_names(None)
    assert data["questions"] == [[], [], []]

    loader = loaders.train_loader(
        _cfg("cifar10", catalog_dir, flip_prob=0.0, worker_count=0),
        tokenizer=ByteTokenizer(),
        global_batch_size=2,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 32, 32, 3) and batch["text"].shape == (2, 16)
    assert set(np.asarray(batch["id"]).tolist()) <= {0, 1, 2, 3}
