"""Processor of :class:`BertForMultimodalNSP` and PFMEL's text templates.

A pair is ``[CLS] A_text A_images [SEP] B_text B_images [SEP]``: each side has optional text and any
number of image placeholder tokens (``[IMG]``), placed after the side's text, inside the sentence
(segment 0 for A, 1 for B). Truncation to ``max_length`` (300, the paper's) shortens the longer text
first and never drops an image token or a ``[SEP]``.

The template functions reproduce the wording of the paper (section 3.2 and 3.4) exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from transformers import ProcessorMixin

from .configuration_multimodal_nsp import DEFAULT_IMAGE_TOKEN

NA = "NA"
DESCRIPTION_WORDS = 30
TWEET_WORDS = 35
RECENT_TWEETS = 3


def _cut_words(text: str, n: int) -> str:
    return " ".join(str(text).split()[:n])


def _field(value: Any) -> str:
    text = "" if value is None else " ".join(str(value).split())
    return text if text else NA


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _join_tweets(tweets: Sequence[str]) -> str:
    """``t1, t2 and t3``; two tweets: ``t1 and t2``; one: ``t1``; none: ``NA``."""
    if not tweets:
        return NA
    if len(tweets) == 1:
        return tweets[0]
    return ", ".join(tweets[:-1]) + " and " + tweets[-1]


def _screen(screen_name: str) -> str:
    screen_name = str(screen_name or "").strip()
    if not screen_name:
        return "@" + NA
    return screen_name if screen_name.startswith("@") else "@" + screen_name


def recent_tweets(timeline: Sequence[Any] | None, n: int = RECENT_TWEETS) -> list[str]:
    """Texts of the ``n`` most recent tweets of a timeline, each cut to its first 35 words.

    Entries are strings or mappings with ``text`` (and optionally ``tweet_id``). When every entry has
    a numeric ``tweet_id``, the largest ids (Twitter ids grow with time) are the most recent;
    otherwise the timeline is taken as given, most recent first. Empty tweets are skipped.
    """
    if not timeline:
        return []
    entries = [{"text": t} if isinstance(t, str) else t for t in timeline]
    ids = [str(_get(e, "tweet_id", "") or "") for e in entries]
    if all(i.isdigit() for i in ids):
        order = sorted(range(len(entries)), key=lambda k: -int(ids[k]))
        entries = [entries[k] for k in order]
    texts = [_cut_words(_get(e, "text", "") or "", TWEET_WORDS) for e in entries]
    return [t for t in texts if t][:n]


def entity_context(profile: Mapping[str, Any] | Any, timeline: Sequence[Any] | None = None) -> str:
    """PFMEL's entity context of a Twitter user (paper, section 3.2), word for word.

    ``"the username of @<screen> who lives in <location> is <name> and the description is
    <description>. some recent tweets of the user include: <t1>, <t2> and <t3>."``

    ``profile`` holds ``screen_name``, ``location``, ``name`` and ``description`` (the
    ``twitterUsers`` field names ``userScreenName``, ``userLocation``, ``userName``,
    ``userDescription`` are accepted too). A missing or empty field is ``NA``. The description is cut
    to its first 30 words, each tweet to its first 35 words. The 3 most recent tweets of ``timeline``
    are used (see :func:`recent_tweets`); with fewer than 3 they are joined as ``"t1 and t2"`` (two),
    ``"t1"`` (one) or ``"NA"`` (none).
    """

    def pick(*keys: str) -> Any:
        for k in keys:
            v = _get(profile, k)
            if v is not None and str(v).strip():
                return v
        return None

    screen = _screen(pick("screen_name", "userScreenName") or "")
    location = _field(pick("location", "userLocation"))
    name = _field(pick("name", "userName"))
    description = _field(_cut_words(pick("description", "userDescription") or "", DESCRIPTION_WORDS))
    if timeline is None:
        timeline = _get(profile, "timeline")
    tweets = _join_tweets(recent_tweets(timeline))
    return (
        f"the username of {screen} who lives in {location} is {name} and the description is {description}. "
        f"some recent tweets of the user include: {tweets}."
    )


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} is empty ({text!r}); expected a non-empty string")
    return text


def mention_prompt(text: str, mention: str) -> str:
    """PFMEL's fine-tuning mention side (section 3.4): ``"<text>. <mention> is"``.

    The prompt needs no span: the mention may differ from its form in the text ("Hermann Beckerath" for
    "Hermann von Beckerath") or not occur there at all. Raises ``ValueError`` for an empty text or mention.
    """
    text = _check_text(text, "tweet text")
    mention = _check_text(mention, "mention")
    return f"{text.strip()}. {mention.strip()} is"


def entity_prompt(screen_name: str, context: str) -> str:
    """PFMEL's fine-tuning entity side (section 3.4): ``"<@screen>. <entity context>"``."""
    context = _check_text(context, "entity context")
    return f"{_screen(screen_name)}. {context.strip()}"


def generic_entity_prompt(name: str, description: str | None = None) -> str:
    """Entity side for KBs whose entities are not Twitter users: ``"<name>. <description>"``.

    This is our extension (the paper only has Twitter users); ``NA`` when there is no description.
    """
    name = _check_text(name, "entity name")
    return f"{name.strip()}. {_field(description)}"


def normalize_image_features(features: Any, center: Any = None, l2: bool = False) -> np.ndarray:
    """Image feature rows ``(n, D)`` as the model receives them: ``center`` subtracted, then divided by the L2 norm
    when ``l2``; a zero row (no image) stays zero. The one normalisation of training (``FeatureTable``) and inference
    (the pipeline, through :meth:`MultimodalNSPProcessor.normalize_image_features`)."""
    out = np.array(features, dtype=np.float32, copy=True).reshape(-1, np.shape(features)[-1])
    present = np.abs(out).sum(1) > 0
    if center is not None:
        out[present] -= np.asarray(center, np.float32).reshape(1, -1)
    if l2:
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.where(norm > 0, out / np.maximum(norm, 1e-12), out)
    return out.astype(np.float32)


def is_twitter_user(entity: Mapping[str, Any]) -> bool:
    """A KB row is a Twitter user (the paper's templates) when it has a ``screen_name`` or a ``timeline``."""
    return bool(str(entity.get("screen_name") or "").strip()) or bool(entity.get("timeline"))


def kb_entity_context(entity: Mapping[str, Any]) -> str:
    """The entity context of a KB row (pre-training sentence B): :func:`entity_context` of a Twitter user,
    :func:`generic_entity_prompt` (``"<name>. <description>"``) otherwise. Used by training and the pipeline alike."""
    if is_twitter_user(entity):
        # an empty name reads as the screen name, as the pipeline's KB reader fills it
        profile = dict(entity, name=entity.get("name") or entity.get("screen_name"))
        return entity_context(profile, entity.get("timeline") or [])
    name = entity.get("name") or entity.get("screen_name") or entity.get("entity_id")
    return generic_entity_prompt(str(name or ""), entity.get("description"))


def kb_entity_prompt(entity: Mapping[str, Any]) -> str:
    """PFMEL's linking sentence B of a KB row: ``"@<screen>. <entity context>"`` for a Twitter user (the screen
    name, else the entity id), the generic ``"<name>. <description>"`` otherwise. One function for training
    (:class:`~modeling_mel.pfmel_data.PFMELCorpus`) and inference (the pipeline)."""
    if is_twitter_user(entity):
        return entity_prompt(entity.get("screen_name") or entity.get("entity_id"), kb_entity_context(entity))
    return kb_entity_context(entity)


def kb_entity_images(entity: Mapping[str, Any]) -> list:
    """The images whose mean feature is PFMEL's entity image: the timeline images (the paper: "mean of the features
    of all timeline images"), else the row's ``images``. Entries as stored (paths, image dicts or PIL images)."""
    images = [t.get("image") for t in entity.get("timeline") or [] if isinstance(t, Mapping) and t.get("image") is not None]
    if not images:
        images = [x for x in entity.get("images") or [] if x is not None]
    return images


class MultimodalNSPProcessor(ProcessorMixin):
    """Builds ``(sentence A, sentence B)`` inputs with image tokens for :class:`BertForMultimodalNSP`.

    Args:
        tokenizer: a BERT tokenizer; the image placeholder is registered on it as a special token.
        image_token: the placeholder (default ``"[IMG]"``).
        max_length: length limit of a pair in tokens, specials and image tokens included (paper: 300).
        image_feature_dim: size of one image feature (2048 for ResNet-50, 512 for CLIP ViT-B/32).
        image_encoder: the identity of the image encoder of training (``ImageFeatureExtractor.identity``, written
            by training; ``mel`` and the pipeline build that encoder and refuse another).
    """

    def __init__(
        self,
        tokenizer=None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        max_length: int = 300,
        image_feature_dim: int = 2048,
        image_features: str | None = None,
        feature_norm: str | None = None,
        feature_mean: Sequence[float] | None = None,
        image_size: int | None = None,
        image_encoder: dict | None = None,
        **kwargs,
    ):
        self.image_token = image_token
        self.max_length = int(max_length)
        self.image_feature_dim = int(image_feature_dim)
        # the image settings a model was trained with (written by training, saved in processor_config.json):
        # the feature source ("resnet50", "precomputed", "none" = text only), the normalisation ("center_l2", "l2",
        # "none") and its centre, and the ResNet input side
        self.image_features = image_features
        self.feature_norm = feature_norm
        self.feature_mean = None if feature_mean is None else [float(v) for v in feature_mean]
        self.image_size = None if image_size is None else int(image_size)
        # the identity of the image encoder that made the training features (ImageFeatureExtractor.identity: name,
        # weights fingerprint, feature kind, size, input size, preprocessing): inference builds it and refuses another
        self.image_encoder = None if image_encoder is None else dict(image_encoder)
        super().__init__(tokenizer, **kwargs)
        if self.tokenizer.convert_tokens_to_ids(image_token) in (None, self.tokenizer.unk_token_id):
            self.tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        self.image_placeholder_id = int(self.tokenizer.convert_tokens_to_ids(image_token))

    def image_normalization(self) -> tuple[np.ndarray | None, bool]:
        """``(center, l2)`` of :func:`normalize_image_features` for this processor's ``feature_norm``."""
        norm = self.feature_norm or "none"
        center = np.asarray(self.feature_mean, np.float32) if norm == "center_l2" and self.feature_mean else None
        return center, norm != "none"

    def normalize_image_features(self, features: Any) -> np.ndarray:
        """Image feature rows normalised as in training (:func:`normalize_image_features` with this processor's
        ``feature_norm`` / ``feature_mean``)."""
        center, l2 = self.image_normalization()
        return normalize_image_features(features, center, l2)

    # -- templates (the sentences of training, section 3.4) -----------------------------------------------------
    @staticmethod
    def mention_side(text: str, mention: str) -> str:
        """Sentence A of a linking pair: :func:`mention_prompt` (``"<text>. <mention> is"``)."""
        return mention_prompt(text, mention)

    @staticmethod
    def entity_side(entity: Mapping[str, Any]) -> str:
        """Sentence B of a linking pair for a KB row: :func:`kb_entity_prompt`."""
        return kb_entity_prompt(entity)

    @staticmethod
    def entity_images(entity: Mapping[str, Any]) -> list:
        """The images whose mean feature is a KB row's entity image: :func:`kb_entity_images`."""
        return kb_entity_images(entity)

    @classmethod
    def from_backbone(cls, backbone: str | None = None, **kwargs) -> "MultimodalNSPProcessor":
        """A processor over the tokenizer of ``backbone`` (``"minilm"`` by default, see backbones.py)."""
        from .backbones import load_tokenizer

        return cls(load_tokenizer(backbone), **kwargs)

    def configure_model(self, model) -> None:
        """Write the image token of this processor into ``model.config`` (image tokens never index the
        embedding matrix, so no resizing is needed)."""
        model.config.image_token = self.image_token
        model.config.image_placeholder_id = self.image_placeholder_id
        if model.config.image_feature_dim != self.image_feature_dim:
            raise ValueError(
                f"model.config.image_feature_dim={model.config.image_feature_dim} but the processor expects "
                f"{self.image_feature_dim}-d image features"
            )

    # -- encoding -------------------------------------------------------------------------------
    def _as_images(self, images: Any, where: str) -> np.ndarray:
        if images is None:
            return np.zeros((0, self.image_feature_dim), np.float32)
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                return np.zeros((0, self.image_feature_dim), np.float32)
            arr = np.stack([np.asarray(x, dtype=np.float32).reshape(-1) for x in images])
        else:
            arr = np.asarray(getattr(images, "numpy", lambda: images)(), dtype=np.float32)
            if arr.ndim == 1:
                arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.image_feature_dim:
            raise ValueError(
                f"{where}: image feature of shape {tuple(arr.shape)}; expected ({self.image_feature_dim},) or "
                f"(n_images, {self.image_feature_dim}). Extract features with the same image model as the model's config"
            )
        return arr

    def _token_ids(self, texts: list[str | None]) -> list[list[int]]:
        present = [i for i, t in enumerate(texts) if t]
        out: list[list[int]] = [[] for _ in texts]
        if present:
            enc = self.tokenizer([texts[i] for i in present], add_special_tokens=False)["input_ids"]
            for i, ids in zip(present, enc):
                out[i] = list(ids)
        return out

    def encode_pair(
        self,
        ids_a: list[int],
        ids_b: list[int],
        n_images_a: int,
        n_images_b: int,
        max_length: int,
    ) -> tuple[list[int], list[int]]:
        """Assemble one pair from token ids: ``(input_ids, token_type_ids)``, truncated to ``max_length`` (longest side
        first; a cut A keeps its first and last halves, so the mention at the end of the linking prompt stays; a cut
        B keeps its head)."""
        fixed = 3 + n_images_a + n_images_b
        budget = max_length - fixed
        if budget < 0:
            raise ValueError(
                f"{n_images_a + n_images_b} image tokens plus 3 special tokens exceed max_length={max_length}"
            )
        la, lb = len(ids_a), len(ids_b)
        if la + lb > budget:  # longest first, ties cut from A (as tokenizers' "longest_first")
            half = budget // 2
            if la <= half:
                lb = budget - la
            elif lb <= half:
                la = budget - lb
            else:
                la, lb = half, budget - half
        tok = self.tokenizer
        img = [self.image_placeholder_id]
        if la < len(ids_a):
            # A cut: keep its head and its tail. The linking prompt "<text>. <mention> is" ends with the mention, so
            # cutting from the right would hide the mention in a long text (every mention would then score alike).
            tail = la // 2
            kept_a = ids_a[: la - tail] + (ids_a[-tail:] if tail else [])
        else:
            kept_a = ids_a
        first = [tok.cls_token_id] + kept_a + img * n_images_a + [tok.sep_token_id]
        second = ids_b[:lb] + img * n_images_b + [tok.sep_token_id]
        return first + second, [0] * len(first) + [1] * len(second)

    def __call__(
        self,
        text: str | None | Sequence[str | None] = None,
        text_pair: str | None | Sequence[str | None] = None,
        images: Any = None,
        images_pair: Any = None,
        max_length: int | None = None,
        padding: bool = True,
        return_tensors: str | None = "pt",
        **kwargs,
    ):
        """Encode pairs. ``text``/``text_pair``: sentence A/B texts (``None`` or ``""`` for an image-only side).

        ``images``/``images_pair``: per example ``None``, one feature ``(D,)``, or ``(n, D)`` / a list of
        features for ``n`` image tokens on that side. Returns ``input_ids``, ``token_type_ids``,
        ``attention_mask`` and, when any example has an image, ``image_features`` ``(B, n_max, D)``
        (zero padded). With ``padding=False, return_tensors=None`` returns lists per example (use
        :meth:`pad` as the data collator).
        """
        single = isinstance(text, str) or text is None and not isinstance(text_pair, (list, tuple))
        if single:
            text, text_pair = [text], [text_pair]
            images, images_pair = [images], [images_pair]
        n = len(text)
        text_pair = list(text_pair) if text_pair is not None else [None] * n
        images = list(images) if images is not None else [None] * n
        images_pair = list(images_pair) if images_pair is not None else [None] * n
        if not (len(text_pair) == len(images) == len(images_pair) == n):
            raise ValueError(
                f"batch sizes differ: text={n}, text_pair={len(text_pair)}, images={len(images)}, "
                f"images_pair={len(images_pair)}"
            )
        max_length = int(max_length or self.max_length)
        ids_a = self._token_ids(list(text))
        ids_b = self._token_ids(text_pair)
        features = []
        for i in range(n):
            img_a = self._as_images(images[i], f"example {i} sentence A")
            img_b = self._as_images(images_pair[i], f"example {i} sentence B")
            for side, ids, img in (("A", ids_a[i], img_a), ("B", ids_b[i], img_b)):
                if not ids and len(img) == 0:
                    raise ValueError(f"example {i}: sentence {side} has neither text nor image; give at least one")
            input_ids, type_ids = self.encode_pair(ids_a[i], ids_b[i], len(img_a), len(img_b), max_length)
            feat = {"input_ids": input_ids, "token_type_ids": type_ids, "attention_mask": [1] * len(input_ids)}
            if len(img_a) + len(img_b):
                feat["image_features"] = np.concatenate([img_a, img_b], 0)
            features.append(feat)
        if not padding and return_tensors is None:
            return features[0] if single else features
        return self.pad(features, return_tensors=return_tensors)

    def pad(self, features: list[dict], return_tensors: str | None = "pt", pad_to_multiple_of: int | None = None):
        """Pad a list of encoded pairs (dynamic padding: to the longest in the batch) into a batch.

        Keys other than the model inputs (``labels``, ``task_ids``, ...) are stacked as they are.
        """
        import torch

        length = max(len(f["input_ids"]) for f in features)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id or 0
        batch: dict[str, Any] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        for f in features:
            k = length - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [pad_id] * k)
            batch["token_type_ids"].append(list(f["token_type_ids"]) + [0] * k)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * k)
        n_img = max((len(f["image_features"]) for f in features if f.get("image_features") is not None), default=0)
        if n_img:
            img = np.zeros((len(features), n_img, self.image_feature_dim), np.float32)
            for i, f in enumerate(features):
                if f.get("image_features") is not None and len(f["image_features"]):
                    img[i, : len(f["image_features"])] = np.asarray(f["image_features"], np.float32)
            batch["image_features"] = img
        extra = [k for k in features[0] if k not in ("input_ids", "token_type_ids", "attention_mask", "image_features")]
        for k in extra:
            batch[k] = [f[k] for f in features]
        if return_tensors == "pt":
            out = {}
            for k, v in batch.items():
                if k == "image_features":
                    out[k] = torch.from_numpy(v)
                else:
                    try:
                        out[k] = torch.tensor(v)
                    except (TypeError, ValueError):
                        out[k] = v
            return out
        return batch

    def __repr__(self) -> str:
        return (
            f"MultimodalNSPProcessor(image_token={self.image_token!r}, max_length={self.max_length}, "
            f"image_feature_dim={self.image_feature_dim}, tokenizer={type(self.tokenizer).__name__})"
        )


__all__ = [
    "MultimodalNSPProcessor",
    "entity_context",
    "mention_prompt",
    "entity_prompt",
    "generic_entity_prompt",
    "normalize_image_features",
    "is_twitter_user",
    "kb_entity_context",
    "kb_entity_prompt",
    "kb_entity_images",
    "recent_tweets",
]
