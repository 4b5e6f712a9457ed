"""Build the stage implementations a run chose (imported only when chosen) and bind them to a file."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from .config import IMPLEMENTATIONS, STAGE_VERBS, MediaInfo, StageOptions
from .stages import DubStages, StageError, call_stage


def build_stages(options: StageOptions) -> DubStages:
    """The stage implementations from options, importing only the chosen implementations (MissingWeights, ValueError)."""
    options.validate()
    built: dict[str, Any] = {"transcriber": None}
    for stage, choice in options.choices().items():
        module, cls, weights = IMPLEMENTATIONS[(stage, choice)]
        try:
            impl = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{stage} {choice!r} is not available: {module}.{cls} ({e})") from None
        built[stage] = impl(getattr(options, weights)) if weights else impl()
    return DubStages(**built)


def bind_stages(stages: DubStages, info: MediaInfo) -> DubStages:
    """The stages for one file: each one with ``for_media`` replaced by what it returns."""
    bound = {}
    for name in STAGE_VERBS:
        st = getattr(stages, name)
        hook = getattr(st, "for_media", None)
        if st is not None and callable(hook):
            bound[name] = call_stage(STAGE_VERBS[name], hook, info)
        else:
            bound[name] = st
    return DubStages(**bound, extra=stages.extra)


def check_languages(stages: DubStages, targets: Sequence[str]) -> None:
    """ValueError for a target the synthesizer or translator says it cannot do (when they can say)."""
    for t in targets:
        voice_for = getattr(stages.synthesizer, "voice_for", None)
        if callable(voice_for):
            try:
                voice_for(t)
            except (StageError, ValueError, KeyError) as e:
                raise ValueError(f"unknown target language {t!r} for {stages.names()['synthesizer']}: "
                                 f"{getattr(e, 'reason', e)}") from None
        supports = getattr(stages.translator, "supports_target", None)
        if callable(supports) and not supports(t):
            raise ValueError(f"unknown target language {t!r} for {stages.names()['translator']}")
