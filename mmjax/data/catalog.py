"""TFDS catalog datasets by name: COCO captions, CIFAR-10/100, ImageNet (2012 and v2), Food-101, Oxford-IIIT
Pet and Caltech-101, read with TFDS's random access (no TensorFlow) and adapted to the pipeline's records.

One ``registry.Dataset`` per dataset, named ``NAME.upper()`` (``CIFAR10`` for TFDS's ``cifar10``; ``NAMES``
lists the TFDS names), which ``mmjax.data.registry`` registers by import path. A dataset must already be
prepared as ``array_record`` under ``data.data_dir`` (None: TFDS's default data dir, ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``; ``gs://`` paths are handed to TFDS as they are): ``tfds build NAME
--file_format=array_record`` on a machine with network (docs/catalog_datasets.md). Nothing is downloaded
here; a dataset that is missing, or stored as tfrecord only, is one ``DataError`` line saying how to fix it.

Records (``CatalogSource``): ``image`` (the stored encoded bytes, decoded later by the pipeline with
Pillow), ``captions``, ``label`` (int64) and ``id`` (int64, the record's index). A classification record
has one caption, built from its class name: ``"a photo of a {class}."`` (Food-101: ``"a photo of {class},
a type of food."``; Oxford-IIIT Pet: ``"a photo of a {class}, a type of pet."``, CLIP's prompts for them).
A COCO record has the image's own captions (TFDS's ``captions/text``) and ``label`` -1; COCO has no classes
(``class_names`` is empty: no zero-shot). Class names and zero-shot prompt templates are the ones OpenAI's
CLIP published (the sources are named above each list), in the order of TFDS's label ids; opening a split
checks that the prepared dataset's label names are those the lists were ordered by.

Importing this module is cheap: TFDS is imported only when a split is opened.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np

from mmjax.config import DataError
from mmjax.data import registry

# The TFDS names of the catalog datasets (registered by the registry); each is the attribute ``NAME.upper()``
# of this module.
NAMES = registry.CATALOG_NAMES

ARRAY_RECORD = "array_record"
DOCS = "docs/catalog_datasets.md"


@dataclasses.dataclass(frozen=True)
class CatalogSpec:
    """What mmjax knows of one TFDS catalog dataset.

    ``splits``: ``(mmjax split, TFDS split)`` pairs (COCO's "validation" is TFDS's "val").
    ``class_names``: the names of the labels in TFDS's label-id order; empty: no classes (COCO).
    ``label_names``: the TFDS label names the prepared dataset must declare, in order (``class_names`` were
    aligned to them); None: only their number is checked (ImageNet's are WordNet ids).
    ``templates``: the zero-shot prompts, ``template.format(class_name)``; empty: the generic ones.
    ``caption``: the caption of a classification record, ``caption.format(class_name)``; None: the
    record's own captions (COCO).
    ``prepare_flags``: extra flags ``tfds build`` needs (ImageNet's manually downloaded archives).
    """

    name: str
    splits: tuple[tuple[str, str], ...]
    class_names: tuple[str, ...] = ()
    label_names: tuple[str, ...] | None = None
    templates: tuple[str, ...] = ()
    caption: str | None = "a photo of a {}."
    prepare_flags: str = ""

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(ours for ours, _ in self.splits)

    def tfds_split(self, split: str) -> str:
        """TFDS's name of mmjax's ``split``; an unknown one is a ``ValueError`` listing the valid ones."""
        for ours, theirs in self.splits:
            if split == ours:
                return theirs
        raise ValueError(
            f"unknown split {split!r} of {self.name}; valid splits: {', '.join(self.split_names)}"
        )

    def build_command(self, data_dir: str | None, overwrite: bool = False) -> str:
        """The ``tfds build`` command line that prepares this dataset as array_record in ``data_dir``
        (``overwrite``: replacing the version there)."""
        where = f" --data_dir={data_dir}" if data_dir else ""
        again = " --overwrite" if overwrite else ""
        return f"tfds build {self.name} --file_format={ARRAY_RECORD}{where}{self.prepare_flags}{again}"


def _data_dir(data_cfg) -> str | None:
    """``data.data_dir``: None (TFDS's default), a URL such as ``gs://...`` as it is, or a local path made
    absolute (the source keeps it: a later change of the working directory must not move it)."""
    data_dir = data_cfg.get("data_dir", None) if data_cfg is not None else None
    if not data_dir:
        return None
    data_dir = os.fspath(data_dir)
    if "://" in data_dir:
        return data_dir
    return os.path.abspath(os.path.expanduser(data_dir))


def _prepared_builder(spec: CatalogSpec, data_dir: str | None):
    """The read-only TFDS builder of the prepared dataset (from its files: no generation code, so no
    TensorFlow); a ``DataError`` line when it is not prepared, or not as array_record."""
    import tensorflow_datasets as tfds  # lazy: only where the records are read
    from tensorflow_datasets.core import read_only_builder

    where = data_dir or "TFDS's default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    try:
        builder = read_only_builder.builder_from_files(spec.name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(
            f"TFDS dataset {spec.name!r} is not prepared in {where}; prepare it as array_record where "
            f"there is network and TensorFlow: {spec.build_command(data_dir)} (see {DOCS})"
        ) from None
    formats = sorted(f.value for f in builder.info.available_file_formats())
    if ARRAY_RECORD not in formats:
        raise DataError(
            f"TFDS dataset {spec.name!r} in {os.fspath(builder.data_dir)} is stored as "
            f"{', '.join(formats) or 'tfrecord'}, which has no random access; convert it once with "
            f"`tfds convert_format --dataset_version_dir={os.fspath(builder.data_dir)} "
            f"--out_file_format={ARRAY_RECORD}` (needs TensorFlow) or rebuild it with "
            f"`{spec.build_command(data_dir, overwrite=True)}`"
        )
    return builder


def _check_labels(spec: CatalogSpec, builder, data_dir: str | None) -> None:
    """The prepared dataset's labels must be those ``spec.class_names`` name, in the same order."""
    if not spec.class_names:
        return
    where = os.fspath(builder.data_dir)
    feature = builder.info.features["label"] if "label" in builder.info.features else None
    if feature is None or not hasattr(feature, "num_classes"):
        raise DataError(f"TFDS dataset {spec.name!r} in {where} has no class label feature 'label'")
    if feature.num_classes != len(spec.class_names):
        raise DataError(
            f"TFDS dataset {spec.name!r} in {where} declares {feature.num_classes} classes, but mmjax's "
            f"class names of it are {len(spec.class_names)}; prepare it again: "
            f"{spec.build_command(data_dir, overwrite=True)}"
        )
    if spec.label_names is None:
        return
    found = [str(n).strip().lower() for n in feature.names]
    for i, (name, expected) in enumerate(zip(found, spec.label_names)):
        if name != expected.lower():
            raise DataError(
                f"TFDS dataset {spec.name!r} in {where} names label {i} {feature.names[i]!r}, not "
                f"{expected!r}: its label order differs from the one mmjax's class names follow "
                f"(mmjax.data.catalog); prepare it with this TFDS version: "
                f"{spec.build_command(data_dir, overwrite=True)}"
            )


def open_split(name: str, data_cfg, split: str) -> CatalogSource:
    """Random access to ``split`` (mmjax's split name) of catalog dataset ``name``, prepared in
    ``data_cfg.data_dir``: the ``source`` of the dataset's ``registry.Dataset``."""
    spec = CATALOG[name]
    tfds_split = spec.tfds_split(split)
    data_dir = _data_dir(data_cfg)
    builder = _prepared_builder(spec, data_dir)
    _check_labels(spec, builder, data_dir)
    if tfds_split not in builder.info.splits:
        raise DataError(
            f"TFDS dataset {name!r} in {os.fspath(builder.data_dir)} has no split {tfds_split!r} (it has "
            f"{', '.join(builder.info.splits) or 'none'}); prepare it again: "
            f"{spec.build_command(data_dir, overwrite=True)}"
        )
    return CatalogSource(
        name, os.fspath(builder.data_dir), tfds_split, builder.info.splits[tfds_split].num_examples
    )


class CatalogSource:
    """Random access to one split of a prepared catalog dataset: ``len(source)``, ``source[i]`` -> the
    pipeline's record ``{image, captions, label, id}`` (see the module docstring).

    Picklable, so that Grain can hand it to its worker processes: it holds the dataset's name, directory,
    split and length, and (re)opens TFDS's array_record source on first use in each process. The images'
    encoded bytes are read as they are stored (TFDS does not decode them: ``SkipDecoding``).
    """

    def __init__(self, name: str, builder_dir: str, split: str, length: int):
        self.name, self.builder_dir, self.split = name, builder_dir, split
        self._length = int(length)
        self._records = None

    def _source(self):
        if self._records is None:
            import tensorflow_datasets as tfds  # lazy: in each process that reads

            builder = tfds.builder_from_directory(self.builder_dir)
            skip = {
                key: tfds.decode.SkipDecoding()
                for key, feature in builder.info.features.items()
                if isinstance(feature, tfds.features.Image)
            }
            self._records = builder.as_data_source(self.split, decoders=skip, file_format=ARRAY_RECORD)
        return self._records

    def __len__(self) -> int:
        return self._length

    def _index(self, i) -> int:
        i = int(i)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(
                f"record {i} out of range for split {self.split!r} of {self.name} ({self._length})"
            )
        return i

    def _record(self, raw: dict, i: int) -> dict:
        spec = CATALOG[self.name]
        if spec.caption is None:
            captions = list(raw["captions"]["text"])
            if not captions:
                raise DataError(
                    f"{self.name} {self.split} record {i} has no captions; the dataset is damaged"
                )
            return {"image": raw["image"], "captions": captions, "label": np.int64(-1), "id": np.int64(i)}
        label = int(raw["label"])
        if not 0 <= label < len(spec.class_names):
            raise DataError(
                f"{self.name} {self.split} record {i} has label {label}, outside the "
                f"{len(spec.class_names)} classes (an unlabelled split?)"
            )
        caption = spec.caption.format(spec.class_names[label])
        return {"image": raw["image"], "captions": [caption], "label": np.int64(label), "id": np.int64(i)}

    def __getitem__(self, i) -> dict:
        i = self._index(i)
        return self._record(self._source()[i], i)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        indices = [self._index(i) for i in indices]
        if not indices:
            return []
        return [self._record(r, i) for r, i in zip(self._source().__getitems__(indices), indices)]

    def __iter__(self):
        for i in range(self._length):
            yield self[i]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_records": None}  # reopened in the process that unpickles it

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"CatalogSource({self.name!r}, {self.split!r}, {self._length} records, {self.builder_dir!r})"


def class_names(name: str, data_cfg=None) -> list[str]:
    """The class names of catalog dataset ``name``, in TFDS's label-id order (COCO: none)."""
    return list(CATALOG[name].class_names)


def prompt_templates(name: str, data_cfg=None) -> list[str]:
    """The zero-shot prompts of catalog dataset ``name`` (``template.format(class_name)``): CLIP's for it,
    else the registry's generic ones."""
    return list(CATALOG[name].templates or registry.GENERIC_PROMPT_TEMPLATES)


# --------------------------------------------------------------------------------------------------------
# The class names and prompts: data, as published; where each list comes from is said above it.

# fmt: off
# CIFAR-10 class names: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md,
# read at commit d05afc4), section "CIFAR10", `classes`. They equal TFDS's label names (from the dataset's
# batches.meta.txt), in the same order.
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# CIFAR-10 and CIFAR-100 prompts: openai/CLIP's data/prompts.md
# (github.com/openai/CLIP/blob/main/data/prompts.md, read at commit d05afc4), sections "CIFAR10" and
# "CIFAR100" (the same 18), `templates`.
_CIFAR_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
)

# CIFAR-100 class names: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md,
# read at commit d05afc4), section "CIFAR100", `classes`. TFDS's label names (the dataset's
# fine_label_names.txt) are these with "_" for the spaces, in the same order.
_CIFAR100_CLASSES = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck",
    "pine tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman",
    "worm",
)

# ImageNet (ILSVRC-2012) class names: openai/CLIP's notebooks/Prompt_Engineering_for_ImageNet.ipynb
# (github.com/openai/CLIP, read at commit d05afc4), `imagenet_classes`; the same 1000 as IMAGENET_CLASSNAMES
# in mlfoundations/open_clip's src/open_clip/zero_shot_metadata.py (read at commit 89fb801). Their order is
# that of the sorted WordNet ids (n01440764 "tench" first), TFDS's label order for imagenet2012 and
# imagenet_v2 (tensorflow_datasets/datasets/imagenet2012/labels.txt).
# As published, two pairs of labels share a name (657 and 744 "missile", 836 and 837 "sunglasses"): their
# synsets are near-duplicates.
_IMAGENET_CLASSES = (
    "tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray", "stingray",
    "rooster", "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco", "indigo bunting",
    "American robin", "bulbul", "jay", "magpie", "chickadee", "American dipper", "kite (bird of prey)",
    "bald eagle", "vulture", "great grey owl", "fire salamander", "smooth newt", "newt", "spotted salamander",
    "axolotl", "American bullfrog", "tree frog", "tailed frog", "loggerhead sea turtle",
    "leatherback sea turtle", "mud turtle", "terrapin", "box turtle", "banded gecko", "green iguana",
    "Carolina anole", "desert grassland whiptail lizard", "agama", "frilled-necked lizard",
    "alligator lizard", "Gila monster", "European green lizard", "chameleon", "Komodo dragon",
    "Nile crocodile", "American alligator", "triceratops", "worm snake", "ring-necked snake",
    "eastern hog-nosed snake", "smooth green snake", "kingsnake", "garter snake", "water snake", "vine snake",
    "night snake", "boa constrictor", "African rock python", "Indian cobra", "green mamba", "sea snake",
    "Saharan horned viper", "eastern diamondback rattlesnake", "sidewinder rattlesnake", "trilobite",
    "harvestman", "scorpion", "yellow garden spider", "barn spider", "European garden spider",
    "southern black widow", "tarantula", "wolf spider", "tick", "centipede", "black grouse", "ptarmigan",
    "ruffed grouse", "prairie grouse", "peafowl", "quail", "partridge", "african grey parrot", "macaw",
    "sulphur-crested cockatoo", "lorikeet", "coucal", "bee eater", "hornbill", "hummingbird", "jacamar",
    "toucan", "duck", "red-breasted merganser", "goose", "black swan", "tusker", "echidna", "platypus",
    "wallaby", "koala", "wombat", "jellyfish", "sea anemone", "brain coral", "flatworm", "nematode", "conch",
    "snail", "slug", "sea slug", "chiton", "chambered nautilus", "Dungeness crab", "rock crab",
    "fiddler crab", "red king crab", "American lobster", "spiny lobster", "crayfish", "hermit crab", "isopod",
    "white stork", "black stork", "spoonbill", "flamingo", "little blue heron", "great egret", "bittern bird",
    "crane bird", "limpkin", "common gallinule", "American coot", "bustard", "ruddy turnstone", "dunlin",
    "common redshank", "dowitcher", "oystercatcher", "pelican", "king penguin", "albatross", "grey whale",
    "killer whale", "dugong", "sea lion", "Chihuahua", "Japanese Chin", "Maltese", "Pekingese", "Shih Tzu",
    "King Charles Spaniel", "Papillon", "toy terrier", "Rhodesian Ridgeback", "Afghan Hound", "Basset Hound",
    "Beagle", "Bloodhound", "Bluetick Coonhound", "Black and Tan Coonhound", "Treeing Walker Coonhound",
    "English foxhound", "Redbone Coonhound", "borzoi", "Irish Wolfhound", "Italian Greyhound", "Whippet",
    "Ibizan Hound", "Norwegian Elkhound", "Otterhound", "Saluki", "Scottish Deerhound", "Weimaraner",
    "Staffordshire Bull Terrier", "American Staffordshire Terrier", "Bedlington Terrier", "Border Terrier",
    "Kerry Blue Terrier", "Irish Terrier", "Norfolk Terrier", "Norwich Terrier", "Yorkshire Terrier",
    "Wire Fox Terrier", "Lakeland Terrier", "Sealyham Terrier", "Airedale Terrier", "Cairn Terrier",
    "Australian Terrier", "Dandie Dinmont Terrier", "Boston Terrier", "Miniature Schnauzer",
    "Giant Schnauzer", "Standard Schnauzer", "Scottish Terrier", "Tibetan Terrier",
    "Australian Silky Terrier", "Soft-coated Wheaten Terrier", "West Highland White Terrier", "Lhasa Apso",
    "Flat-Coated Retriever", "Curly-coated Retriever", "Golden Retriever", "Labrador Retriever",
    "Chesapeake Bay Retriever", "German Shorthaired Pointer", "Vizsla", "English Setter", "Irish Setter",
    "Gordon Setter", "Brittany dog", "Clumber Spaniel", "English Springer Spaniel", "Welsh Springer Spaniel",
    "Cocker Spaniel", "Sussex Spaniel", "Irish Water Spaniel", "Kuvasz", "Schipperke", "Groenendael dog",
    "Malinois", "Briard", "Australian Kelpie", "Komondor", "Old English Sheepdog", "Shetland Sheepdog",
    "collie", "Border Collie", "Bouvier des Flandres dog", "Rottweiler", "German Shepherd Dog", "Dobermann",
    "Miniature Pinscher", "Greater Swiss Mountain Dog", "Bernese Mountain Dog", "Appenzeller Sennenhund",
    "Entlebucher Sennenhund", "Boxer", "Bullmastiff", "Tibetan Mastiff", "French Bulldog", "Great Dane",
    "St. Bernard", "husky", "Alaskan Malamute", "Siberian Husky", "Dalmatian", "Affenpinscher", "Basenji",
    "pug", "Leonberger", "Newfoundland dog", "Great Pyrenees dog", "Samoyed", "Pomeranian", "Chow Chow",
    "Keeshond", "brussels griffon", "Pembroke Welsh Corgi", "Cardigan Welsh Corgi", "Toy Poodle",
    "Miniature Poodle", "Standard Poodle", "Mexican hairless dog (xoloitzcuintli)", "grey wolf",
    "Alaskan tundra wolf", "red wolf or maned wolf", "coyote", "dingo", "dhole", "African wild dog", "hyena",
    "red fox", "kit fox", "Arctic fox", "grey fox", "tabby cat", "tiger cat", "Persian cat", "Siamese cat",
    "Egyptian Mau", "cougar", "lynx", "leopard", "snow leopard", "jaguar", "lion", "tiger", "cheetah",
    "brown bear", "American black bear", "polar bear", "sloth bear", "mongoose", "meerkat", "tiger beetle",
    "ladybug", "ground beetle", "longhorn beetle", "leaf beetle", "dung beetle", "rhinoceros beetle",
    "weevil", "fly", "bee", "ant", "grasshopper", "cricket insect", "stick insect", "cockroach",
    "praying mantis", "cicada", "leafhopper", "lacewing", "dragonfly", "damselfly", "red admiral butterfly",
    "ringlet butterfly", "monarch butterfly", "small white butterfly", "sulphur butterfly",
    "gossamer-winged butterfly", "starfish", "sea urchin", "sea cucumber", "cottontail rabbit", "hare",
    "Angora rabbit", "hamster", "porcupine", "fox squirrel", "marmot", "beaver", "guinea pig",
    "common sorrel horse", "zebra", "pig", "wild boar", "warthog", "hippopotamus", "ox", "water buffalo",
    "bison", "ram (adult male sheep)", "bighorn sheep", "Alpine ibex", "hartebeest", "impala (antelope)",
    "gazelle", "arabian camel", "llama", "weasel", "mink", "European polecat", "black-footed ferret", "otter",
    "skunk", "badger", "armadillo", "three-toed sloth", "orangutan", "gorilla", "chimpanzee", "gibbon",
    "siamang", "guenon", "patas monkey", "baboon", "macaque", "langur", "black-and-white colobus",
    "proboscis monkey", "marmoset", "white-headed capuchin", "howler monkey", "titi monkey",
    "Geoffroy's spider monkey", "common squirrel monkey", "ring-tailed lemur", "indri", "Asian elephant",
    "African bush elephant", "red panda", "giant panda", "snoek fish", "eel", "silver salmon",
    "rock beauty fish", "clownfish", "sturgeon", "gar fish", "lionfish", "pufferfish", "abacus", "abaya",
    "academic gown", "accordion", "acoustic guitar", "aircraft carrier", "airliner", "airship", "altar",
    "ambulance", "amphibious vehicle", "analog clock", "apiary", "apron", "trash can", "assault rifle",
    "backpack", "bakery", "balance beam", "balloon", "ballpoint pen", "Band-Aid", "banjo",
    "baluster / handrail", "barbell", "barber chair", "barbershop", "barn", "barometer", "barrel",
    "wheelbarrow", "baseball", "basketball", "bassinet", "bassoon", "swimming cap", "bath towel", "bathtub",
    "station wagon", "lighthouse", "beaker", "military hat (bearskin or shako)", "beer bottle", "beer glass",
    "bell tower", "baby bib", "tandem bicycle", "bikini", "ring binder", "binoculars", "birdhouse",
    "boathouse", "bobsleigh", "bolo tie", "poke bonnet", "bookcase", "bookstore", "bottle cap", "hunting bow",
    "bow tie", "brass memorial plaque", "bra", "breakwater", "breastplate", "broom", "bucket", "buckle",
    "bulletproof vest", "high-speed train", "butcher shop", "taxicab", "cauldron", "candle", "cannon",
    "canoe", "can opener", "cardigan", "car mirror", "carousel", "tool kit", "cardboard box / carton",
    "car wheel", "automated teller machine", "cassette", "cassette player", "castle", "catamaran",
    "CD player", "cello", "mobile phone", "chain", "chain-link fence", "chain mail", "chainsaw",
    "storage chest", "chiffonier", "bell or wind chime", "china cabinet", "Christmas stocking", "church",
    "movie theater", "cleaver", "cliff dwelling", "cloak", "clogs", "cocktail shaker", "coffee mug",
    "coffeemaker", "spiral or coil", "combination lock", "computer keyboard", "candy store", "container ship",
    "convertible", "corkscrew", "cornet", "cowboy boot", "cowboy hat", "cradle", "construction crane",
    "crash helmet", "crate", "infant bed", "Crock Pot", "croquet ball", "crutch", "cuirass", "dam", "desk",
    "desktop computer", "rotary dial telephone", "diaper", "digital clock", "digital watch", "dining table",
    "dishcloth", "dishwasher", "disc brake", "dock", "dog sled", "dome", "doormat", "drilling rig", "drum",
    "drumstick", "dumbbell", "Dutch oven", "electric fan", "electric guitar", "electric locomotive",
    "entertainment center", "envelope", "espresso machine", "face powder", "feather boa", "filing cabinet",
    "fireboat", "fire truck", "fire screen", "flagpole", "flute", "folding chair", "football helmet",
    "forklift", "fountain", "fountain pen", "four-poster bed", "freight car", "French horn", "frying pan",
    "fur coat", "garbage truck", "gas mask or respirator", "gas pump", "goblet", "go-kart", "golf ball",
    "golf cart", "gondola", "gong", "gown", "grand piano", "greenhouse", "radiator grille", "grocery store",
    "guillotine", "hair clip", "hair spray", "half-track", "hammer", "hamper", "hair dryer",
    "hand-held computer", "handkerchief", "hard disk drive", "harmonica", "harp", "combine harvester",
    "hatchet", "holster", "home theater", "honeycomb", "hook", "hoop skirt", "gymnastic horizontal bar",
    "horse-drawn vehicle", "hourglass", "iPod", "clothes iron", "carved pumpkin", "jeans", "jeep", "T-shirt",
    "jigsaw puzzle", "rickshaw", "joystick", "kimono", "knee pad", "knot", "lab coat", "ladle", "lampshade",
    "laptop computer", "lawn mower", "lens cap", "letter opener", "library", "lifeboat", "lighter",
    "limousine", "ocean liner", "lipstick", "slip-on shoe", "lotion", "music speaker",
    "loupe magnifying glass", "sawmill", "magnetic compass", "messenger bag", "mailbox", "tights",
    "one-piece bathing suit", "manhole cover", "maraca", "marimba", "mask", "matchstick", "maypole", "maze",
    "measuring cup", "medicine cabinet", "megalith", "microphone", "microwave oven", "military uniform",
    "milk can", "minibus", "miniskirt", "minivan", "missile", "mitten", "mixing bowl", "mobile home",
    "ford model t", "modem", "monastery", "monitor", "moped", "mortar and pestle", "graduation cap", "mosque",
    "mosquito net", "vespa", "mountain bike", "tent", "computer mouse", "mousetrap", "moving van", "muzzle",
    "metal nail", "neck brace", "necklace", "baby pacifier", "notebook computer", "obelisk", "oboe",
    "ocarina", "odometer", "oil filter", "pipe organ", "oscilloscope", "overskirt", "bullock cart",
    "oxygen mask", "product packet / packaging", "paddle", "paddle wheel", "padlock", "paintbrush", "pajamas",
    "palace", "pan flute", "paper towel", "parachute", "parallel bars", "park bench", "parking meter",
    "railroad car", "patio", "payphone", "pedestal", "pencil case", "pencil sharpener", "perfume",
    "Petri dish", "photocopier", "plectrum", "Pickelhaube", "picket fence", "pickup truck", "pier",
    "piggy bank", "pill bottle", "pillow", "ping-pong ball", "pinwheel", "pirate ship", "drink pitcher",
    "block plane", "planetarium", "plastic bag", "plate rack", "farm plow", "plunger", "Polaroid camera",
    "pole", "police van", "poncho", "pool table", "soda bottle", "plant pot", "potter's wheel", "power drill",
    "prayer rug", "printer", "prison", "missile", "projector", "hockey puck", "punching bag", "purse",
    "quill", "quilt", "race car", "racket", "radiator", "radio", "radio telescope", "rain barrel",
    "recreational vehicle", "fishing casting reel", "reflex camera", "refrigerator", "remote control",
    "restaurant", "revolver", "rifle", "rocking chair", "rotisserie", "eraser", "rugby ball",
    "ruler measuring stick", "sneaker", "safe", "safety pin", "salt shaker", "sandal", "sarong", "saxophone",
    "scabbard", "weighing scale", "school bus", "schooner", "scoreboard", "CRT monitor", "screw",
    "screwdriver", "seat belt", "sewing machine", "shield", "shoe store", "shoji screen / room divider",
    "shopping basket", "shopping cart", "shovel", "shower cap", "shower curtain", "ski", "balaclava ski mask",
    "sleeping bag", "slide rule", "sliding door", "slot machine", "snorkel", "snowmobile", "snowplow",
    "soap dispenser", "soccer ball", "sock", "solar thermal collector", "sombrero", "soup bowl",
    "keyboard space bar", "space heater", "space shuttle", "spatula", "motorboat", "spider web", "spindle",
    "sports car", "spotlight", "stage", "steam locomotive", "through arch bridge", "steel drum",
    "stethoscope", "scarf", "stone wall", "stopwatch", "stove", "strainer", "tram", "stretcher", "couch",
    "stupa", "submarine", "suit", "sundial", "sunglasses", "sunglasses", "sunscreen", "suspension bridge",
    "mop", "sweatshirt", "swim trunks / shorts", "swing", "electrical switch", "syringe", "table lamp",
    "tank", "tape player", "teapot", "teddy bear", "television", "tennis ball", "thatched roof",
    "front curtain", "thimble", "threshing machine", "throne", "tile roof", "toaster", "tobacco shop",
    "toilet seat", "torch", "totem pole", "tow truck", "toy store", "tractor", "semi-trailer truck", "tray",
    "trench coat", "tricycle", "trimaran", "tripod", "triumphal arch", "trolleybus", "trombone", "hot tub",
    "turnstile", "typewriter keyboard", "umbrella", "unicycle", "upright piano", "vacuum cleaner", "vase",
    "vaulted or arched ceiling", "velvet fabric", "vending machine", "vestment", "viaduct", "violin",
    "volleyball", "waffle iron", "wall clock", "wallet", "wardrobe", "military aircraft", "sink",
    "washing machine", "water bottle", "water jug", "water tower", "whiskey jug", "whistle", "hair wig",
    "window screen", "window shade", "Windsor tie", "wine bottle", "airplane wing", "wok", "wooden spoon",
    "wool", "split-rail fence", "shipwreck", "sailboat", "yurt", "website", "comic book", "crossword",
    "traffic or street sign", "traffic light", "dust jacket", "menu", "plate", "guacamole", "consomme",
    "hot pot", "trifle", "ice cream", "popsicle", "baguette", "bagel", "pretzel", "cheeseburger", "hot dog",
    "mashed potatoes", "cabbage", "broccoli", "cauliflower", "zucchini", "spaghetti squash", "acorn squash",
    "butternut squash", "cucumber", "artichoke", "bell pepper", "cardoon", "mushroom", "Granny Smith apple",
    "strawberry", "orange", "lemon", "fig", "pineapple", "banana", "jackfruit", "cherimoya (custard apple)",
    "pomegranate", "hay", "carbonara", "chocolate syrup", "dough", "meatloaf", "pizza", "pot pie", "burrito",
    "red wine", "espresso", "tea cup", "eggnog", "mountain", "bubble", "cliff", "coral reef", "geyser",
    "lakeshore", "promontory", "sandbar", "beach", "valley", "volcano", "baseball player", "bridegroom",
    "scuba diver", "rapeseed", "daisy", "yellow lady's slipper", "corn", "acorn", "rose hip",
    "horse chestnut seed", "coral fungus", "agaric", "gyromitra", "stinkhorn mushroom", "earth star fungus",
    "hen of the woods mushroom", "bolete", "corn cob", "toilet paper",
)

# ImageNet prompts (80, for imagenet2012 and imagenet_v2): openai/CLIP's
# notebooks/Prompt_Engineering_for_ImageNet.ipynb (github.com/openai/CLIP, read at commit d05afc4),
# `imagenet_templates`; the same as OPENAI_IMAGENET_TEMPLATES in mlfoundations/open_clip's
# src/open_clip/zero_shot_metadata.py (read at commit 89fb801).
_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.",
    "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)

# Food-101: (TFDS label name, class name) pairs in TFDS's label-id order. The TFDS names:
# tensorflow_datasets/image_classification/food-101_classes.txt (TFDS 4.9.10). The class names:
# openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md, read at commit d05afc4),
# section "Food101", `classes`, which lists "cheese plate" before "cheesecake" (TFDS: after it).
_FOOD101_LABELS = (
    ("apple_pie", "apple pie"), ("baby_back_ribs", "baby back ribs"), ("baklava", "baklava"),
    ("beef_carpaccio", "beef carpaccio"), ("beef_tartare", "beef tartare"), ("beet_salad", "beet salad"),
    ("beignets", "beignets"), ("bibimbap", "bibimbap"), ("bread_pudding", "bread pudding"),
    ("breakfast_burrito", "breakfast burrito"), ("bruschetta", "bruschetta"),
    ("caesar_salad", "caesar salad"), ("cannoli", "cannoli"), ("caprese_salad", "caprese salad"),
    ("carrot_cake", "carrot cake"), ("ceviche", "ceviche"), ("cheesecake", "cheesecake"),
    ("cheese_plate", "cheese plate"), ("chicken_curry", "chicken curry"),
    ("chicken_quesadilla", "chicken quesadilla"), ("chicken_wings", "chicken wings"),
    ("chocolate_cake", "chocolate cake"), ("chocolate_mousse", "chocolate mousse"), ("churros", "churros"),
    ("clam_chowder", "clam chowder"), ("club_sandwich", "club sandwich"), ("crab_cakes", "crab cakes"),
    ("creme_brulee", "creme brulee"), ("croque_madame", "croque madame"), ("cup_cakes", "cup cakes"),
    ("deviled_eggs", "deviled eggs"), ("donuts", "donuts"), ("dumplings", "dumplings"),
    ("edamame", "edamame"), ("eggs_benedict", "eggs benedict"), ("escargots", "escargots"),
    ("falafel", "falafel"), ("filet_mignon", "filet mignon"), ("fish_and_chips", "fish and chips"),
    ("foie_gras", "foie gras"), ("french_fries", "french fries"), ("french_onion_soup", "french onion soup"),
    ("french_toast", "french toast"), ("fried_calamari", "fried calamari"), ("fried_rice", "fried rice"),
    ("frozen_yogurt", "frozen yogurt"), ("garlic_bread", "garlic bread"), ("gnocchi", "gnocchi"),
    ("greek_salad", "greek salad"), ("grilled_cheese_sandwich", "grilled cheese sandwich"),
    ("grilled_salmon", "grilled salmon"), ("guacamole", "guacamole"), ("gyoza", "gyoza"),
    ("hamburger", "hamburger"), ("hot_and_sour_soup", "hot and sour soup"), ("hot_dog", "hot dog"),
    ("huevos_rancheros", "huevos rancheros"), ("hummus", "hummus"), ("ice_cream", "ice cream"),
    ("lasagna", "lasagna"), ("lobster_bisque", "lobster bisque"),
    ("lobster_roll_sandwich", "lobster roll sandwich"), ("macaroni_and_cheese", "macaroni and cheese"),
    ("macarons", "macarons"), ("miso_soup", "miso soup"), ("mussels", "mussels"), ("nachos", "nachos"),
    ("omelette", "omelette"), ("onion_rings", "onion rings"), ("oysters", "oysters"),
    ("pad_thai", "pad thai"), ("paella", "paella"), ("pancakes", "pancakes"), ("panna_cotta", "panna cotta"),
    ("peking_duck", "peking duck"), ("pho", "pho"), ("pizza", "pizza"), ("pork_chop", "pork chop"),
    ("poutine", "poutine"), ("prime_rib", "prime rib"), ("pulled_pork_sandwich", "pulled pork sandwich"),
    ("ramen", "ramen"), ("ravioli", "ravioli"), ("red_velvet_cake", "red velvet cake"),
    ("risotto", "risotto"), ("samosa", "samosa"), ("sashimi", "sashimi"), ("scallops", "scallops"),
    ("seaweed_salad", "seaweed salad"), ("shrimp_and_grits", "shrimp and grits"),
    ("spaghetti_bolognese", "spaghetti bolognese"), ("spaghetti_carbonara", "spaghetti carbonara"),
    ("spring_rolls", "spring rolls"), ("steak", "steak"), ("strawberry_shortcake", "strawberry shortcake"),
    ("sushi", "sushi"), ("tacos", "tacos"), ("takoyaki", "takoyaki"), ("tiramisu", "tiramisu"),
    ("tuna_tartare", "tuna tartare"), ("waffles", "waffles"),
)

# Food-101 prompt: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md, read at
# commit d05afc4), section "Food101", `templates`.
_FOOD101_TEMPLATES = (
    "a photo of {}, a type of food.",
)

# Oxford-IIIT Pet: (TFDS label name, class name) pairs in TFDS's label-id order. The TFDS names:
# _LABEL_CLASSES in tensorflow_datasets/datasets/oxford_iiit_pet/oxford_iiit_pet_dataset_builder.py (TFDS
# 4.9.10). The class names: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md,
# read at commit d05afc4), section "OxfordPets", `classes`, which sorts the capitalised (cat) breeds first.
_OXFORD_IIIT_PET_LABELS = (
    ("Abyssinian", "Abyssinian"), ("american_bulldog", "american bulldog"),
    ("american_pit_bull_terrier", "american pit bull terrier"), ("basset_hound", "basset hound"),
    ("beagle", "beagle"), ("Bengal", "Bengal"), ("Birman", "Birman"), ("Bombay", "Bombay"),
    ("boxer", "boxer"), ("British_Shorthair", "British Shorthair"), ("chihuahua", "chihuahua"),
    ("Egyptian_Mau", "Egyptian Mau"), ("english_cocker_spaniel", "english cocker spaniel"),
    ("english_setter", "english setter"), ("german_shorthaired", "german shorthaired"),
    ("great_pyrenees", "great pyrenees"), ("havanese", "havanese"), ("japanese_chin", "japanese chin"),
    ("keeshond", "keeshond"), ("leonberger", "leonberger"), ("Maine_Coon", "Maine Coon"),
    ("miniature_pinscher", "miniature pinscher"), ("newfoundland", "newfoundland"), ("Persian", "Persian"),
    ("pomeranian", "pomeranian"), ("pug", "pug"), ("Ragdoll", "Ragdoll"), ("Russian_Blue", "Russian Blue"),
    ("saint_bernard", "saint bernard"), ("samoyed", "samoyed"), ("scottish_terrier", "scottish terrier"),
    ("shiba_inu", "shiba inu"), ("Siamese", "Siamese"), ("Sphynx", "Sphynx"),
    ("staffordshire_bull_terrier", "staffordshire bull terrier"), ("wheaten_terrier", "wheaten terrier"),
    ("yorkshire_terrier", "yorkshire terrier"),
)

# Oxford-IIIT Pet prompt: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md,
# read at commit d05afc4), section "OxfordPets", `templates`.
_OXFORD_IIIT_PET_TEMPLATES = (
    "a photo of a {}, a type of pet.",
)

# Caltech-101: (TFDS label name, class name) pairs in TFDS's label-id order. The TFDS names:
# tensorflow_datasets/image_classification/caltech101_labels.txt (TFDS 4.9.10; the lower-cased folder names,
# sorted). The class names: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md,
# read at commit d05afc4), section "Caltech101", `classes`, which follow the folders' own order
# (BACKGROUND_Google, Faces, Faces_easy, Leopards, Motorbikes, then the lower-case folders), paired here
# folder by folder. "head of a  crocodile" (two spaces) is as published.
_CALTECH101_LABELS = (
    ("accordion", "accordion"), ("airplanes", "airplane"), ("anchor", "anchor"), ("ant", "ant"),
    ("background_google", "background"), ("barrel", "barrel"), ("bass", "bass"), ("beaver", "beaver"),
    ("binocular", "binocular"), ("bonsai", "bonsai"), ("brain", "brain"), ("brontosaurus", "brontosaurus"),
    ("buddha", "buddha"), ("butterfly", "butterfly"), ("camera", "camera"), ("cannon", "cannon"),
    ("car_side", "side of a car"), ("ceiling_fan", "ceiling fan"), ("cellphone", "cellphone"),
    ("chair", "chair"), ("chandelier", "chandelier"), ("cougar_body", "body of a cougar cat"),
    ("cougar_face", "face of a cougar cat"), ("crab", "crab"), ("crayfish", "crayfish"),
    ("crocodile", "crocodile"), ("crocodile_head", "head of a  crocodile"), ("cup", "cup"),
    ("dalmatian", "dalmatian"), ("dollar_bill", "dollar bill"), ("dolphin", "dolphin"),
    ("dragonfly", "dragonfly"), ("electric_guitar", "electric guitar"), ("elephant", "elephant"),
    ("emu", "emu"), ("euphonium", "euphonium"), ("ewer", "ewer"), ("faces", "off-center face"),
    ("faces_easy", "centered face"), ("ferry", "ferry"), ("flamingo", "flamingo"),
    ("flamingo_head", "head of a flamingo"), ("garfield", "garfield"), ("gerenuk", "gerenuk"),
    ("gramophone", "gramophone"), ("grand_piano", "grand piano"), ("hawksbill", "hawksbill"),
    ("headphone", "headphone"), ("hedgehog", "hedgehog"), ("helicopter", "helicopter"), ("ibis", "ibis"),
    ("inline_skate", "inline skate"), ("joshua_tree", "joshua tree"), ("kangaroo", "kangaroo"),
    ("ketch", "ketch"), ("lamp", "lamp"), ("laptop", "laptop"), ("leopards", "leopard"), ("llama", "llama"),
    ("lobster", "lobster"), ("lotus", "lotus"), ("mandolin", "mandolin"), ("mayfly", "mayfly"),
    ("menorah", "menorah"), ("metronome", "metronome"), ("minaret", "minaret"), ("motorbikes", "motorbike"),
    ("nautilus", "nautilus"), ("octopus", "octopus"), ("okapi", "okapi"), ("pagoda", "pagoda"),
    ("panda", "panda"), ("pigeon", "pigeon"), ("pizza", "pizza"), ("platypus", "platypus"),
    ("pyramid", "pyramid"), ("revolver", "revolver"), ("rhino", "rhino"), ("rooster", "rooster"),
    ("saxophone", "saxophone"), ("schooner", "schooner"), ("scissors", "scissors"), ("scorpion", "scorpion"),
    ("sea_horse", "sea horse"), ("snoopy", "snoopy (cartoon beagle)"), ("soccer_ball", "soccer ball"),
    ("stapler", "stapler"), ("starfish", "starfish"), ("stegosaurus", "stegosaurus"),
    ("stop_sign", "stop sign"), ("strawberry", "strawberry"), ("sunflower", "sunflower"), ("tick", "tick"),
    ("trilobite", "trilobite"), ("umbrella", "umbrella"), ("watch", "watch"), ("water_lilly", "water lilly"),
    ("wheelchair", "wheelchair"), ("wild_cat", "wild cat"), ("windsor_chair", "windsor chair"),
    ("wrench", "wrench"), ("yin_yang", "yin and yang symbol"),
)

# Caltech-101 prompts: openai/CLIP's data/prompts.md (github.com/openai/CLIP/blob/main/data/prompts.md, read
# at commit d05afc4), section "Caltech101", `templates`.
_CALTECH101_TEMPLATES = (
    "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.",
    "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.", "a embroidered {}.", "a cartoon {}.",
    "a {} in a video game.", "a plushie {}.", "a origami {}.", "art of a {}.", "graffiti of a {}.",
    "a drawing of a {}.", "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.",
    "the plastic {}.", "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
    "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.", "the {} in a video game.",
    "the plushie {}.", "the origami {}.", "art of the {}.", "graffiti of the {}.", "a drawing of the {}.",
    "a doodle of the {}.",
)

# fmt: on


def _names(pairs) -> tuple[str, ...]:
    return tuple(name for _, name in pairs)


def _tfds_labels(pairs) -> tuple[str, ...]:
    return tuple(label for label, _ in pairs)


# ImageNet is downloaded by hand: the folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.
_IMAGENET_FLAGS = " --manual_dir=ILSVRC2012_TARS_DIR"

# TFDS's splits of each dataset (its builder's split generators in TFDS 4.9.10); imagenet2012's "test"
# split (labels -1) is left out: it has no labels to caption.
CATALOG: dict[str, CatalogSpec] = {
    spec.name: spec
    for spec in (
        CatalogSpec(
            "coco_captions",
            splits=(("train", "train"), ("validation", "val"), ("test", "test"), ("restval", "restval")),
            caption=None,
        ),
        CatalogSpec(
            "cifar10",
            splits=(("train", "train"), ("test", "test")),
            class_names=_CIFAR10_CLASSES,
            label_names=_CIFAR10_CLASSES,
            templates=_CIFAR_TEMPLATES,
        ),
        CatalogSpec(
            "cifar100",
            splits=(("train", "train"), ("test", "test")),
            class_names=_CIFAR100_CLASSES,
            label_names=tuple(name.replace(" ", "_") for name in _CIFAR100_CLASSES),
            templates=_CIFAR_TEMPLATES,
        ),
        CatalogSpec(
            "imagenet2012",
            splits=(("train", "train"), ("validation", "validation")),
            class_names=_IMAGENET_CLASSES,
            templates=_IMAGENET_TEMPLATES,
            prepare_flags=_IMAGENET_FLAGS,
        ),
        CatalogSpec(
            "imagenet_v2",
            splits=(("test", "test"),),
            class_names=_IMAGENET_CLASSES,
            templates=_IMAGENET_TEMPLATES,
        ),
        CatalogSpec(
            "food101",
            splits=(("train", "train"), ("validation", "validation")),
            class_names=_names(_FOOD101_LABELS),
            label_names=_tfds_labels(_FOOD101_LABELS),
            templates=_FOOD101_TEMPLATES,
            caption=_FOOD101_TEMPLATES[0],
        ),
        CatalogSpec(
            "oxford_iiit_pet",
            splits=(("train", "train"), ("test", "test")),
            class_names=_names(_OXFORD_IIIT_PET_LABELS),
            label_names=_tfds_labels(_OXFORD_IIIT_PET_LABELS),
            templates=_OXFORD_IIIT_PET_TEMPLATES,
            caption=_OXFORD_IIIT_PET_TEMPLATES[0],
        ),
        CatalogSpec(
            "caltech101",
            splits=(("train", "train"), ("test", "test")),
            class_names=_names(_CALTECH101_LABELS),
            label_names=_tfds_labels(_CALTECH101_LABELS),
            templates=_CALTECH101_TEMPLATES,
        ),
    )
}


def _dataset(name: str) -> registry.Dataset:
    """The ``registry.Dataset`` of catalog dataset ``name`` (no grammar: flips leave captions as they are)."""
    return registry.Dataset(
        source=functools.partial(open_split, name),
        class_names=functools.partial(class_names, name),
        prompt_templates=functools.partial(prompt_templates, name),
        splits=CATALOG[name].split_names,
    )


# Image-caption pairs (contrastive training, retrieval; captioning for the fusion configs); no classes.
COCO_CAPTIONS = _dataset("coco_captions")
CIFAR10 = _dataset("cifar10")
CIFAR100 = _dataset("cifar100")
IMAGENET2012 = _dataset("imagenet2012")
IMAGENET_V2 = _dataset("imagenet_v2")  # TFDS's default config, "matched-frequency"
FOOD101 = _dataset("food101")
OXFORD_IIIT_PET = _dataset("oxford_iiit_pet")
CALTECH101 = _dataset("caltech101")
