"""Whether a ``pretrained=`` name is a local path or a Hugging Face hub repository, without torch.

Kept apart from :mod:`mobilevit_torch.weights` (which imports torch) so that the command lines can
check their settings, ``pretrained=`` included, before paying for torch's import.
"""

from __future__ import annotations

import re
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".tar")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(value: str) -> bool:
    """Whether ``value`` (which names nothing on disk) is to be fetched from the Hugging Face hub.

    ``owner/name`` is a hub id unless it reads as a local path: it starts with ``.``, ``/`` or ``~``,
    ends like a weights file (``runs/best.pt``), or its first part is an existing local folder."""
    if not _HUB_ID.match(value) or value.startswith((".", "/", "~")):
        return False
    if value.lower().endswith(WEIGHT_SUFFIXES):
        return False
    return not Path(value.split("/", 1)[0]).is_dir()
