"""Zero-shot latent classes from a CLIP: the class whose prompts' text embedding is nearest.

For class names ``c_1..c_C`` and prompt templates ``p_1..p_T`` (``"a photo of a {}."``), the
class embedding is CLIP's prompt ensemble (Radford et al. 2021)::

    w_c = normalize( 1/T * sum_t normalize(g(p_t(c_c))) )      g: the text tower, (C, e)

and an image with embedding ``x_i`` (the image tower's projection, or the mean of its
unit-normalised view projections that the embed stage stores) gets the class::

    class(i) = argmax_c  w_c . x_i / ||x_i||

(dividing by ``||x_i||`` changes no argmax; it keeps the cosine readable). Ties go to the
lower class index. Plain torch/numpy; the text tower is passed in as a function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sas_ray.core.selection.similarity import as_compute, normalize_rows
from sas_ray.errors import SasRayError

# a short list of the standard CLIP ImageNet templates (the CLIP notebook's 7-template
# ensemble, with the plain "a photo of a {}.")
DEFAULT_PROMPTS = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """``prompts`` (each with one ``{}``), or :data:`DEFAULT_PROMPTS` when empty."""
    prompts = list(prompts) or list(DEFAULT_PROMPTS)
    bad = [p for p in prompts if p.count("{}") != 1]
    if bad:
        raise SasRayError(f"latent.prompts {bad[0]!r} must hold '{{}}' once (where the class "
                          "name goes), e.g. 'a photo of a {}.'")
    return prompts


def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor],
                     class_names: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """``w`` (module docstring): ``(C, e)`` float32 unit rows, one per class name.

    ``encode_text(texts) -> (len(texts), e)``: the CLIP's text tower.
    """
    if not class_names:
        raise SasRayError("zero-shot latent classes need class names; pass "
                          "--latent.class_names_file FILE (one name per line)")
    prompts = check_prompts(prompts)
    rows = []
    for name in class_names:
        z = F.normalize(encode_text([p.format(name) for p in prompts]).float(), dim=1)
        rows.append(F.normalize(z.mean(0), dim=0))
    return torch.stack(rows).cpu().numpy().astype(np.float32)


def zeroshot_classes(x: np.ndarray, classes: np.ndarray, block_size: int = 8192) -> np.ndarray:
    """``argmax_c w_c . x_i / ||x_i||`` for every row of ``x`` (n, e) against ``classes``
    (C, e) -> (n,) int64 in ``[0, C)``; ``x`` is read in blocks (it may be a memory map)."""
    if x.ndim != 2 or classes.ndim != 2 or x.shape[1] != classes.shape[1]:
        raise SasRayError(f"image embeddings {x.shape} and class embeddings {classes.shape} "
                          "are not in one space; embed with the CLIP's projection "
                          "(--embed.feature projection) of the same open_clip encoder")
    w = as_compute(classes)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], block_size):
        block = normalize_rows(as_compute(x[start:start + block_size]))
        out[start:start + block.shape[0]] = (block @ w.T).argmax(axis=1)
    return out
