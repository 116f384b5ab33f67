"""Building a training run: the one place a config, its data and its output directory become a
ready :class:`trainer.Trainer` (the CLI, the quickstart, the experiments, ``weights/build.py``
and the tests all come through here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import mlx.nn as nn

from .config import Config, validate
from .data import load_meta
from . import files
from .errors import ConfigError
from .rundir import RunDirectory

Resume = Union[bool, str]  # True: continue the run in out; False: a new run; "auto": either


def follow_sources(cfg: Config, meta: dict, explicit: frozenset[str] | set[str] = frozenset()
                   ) -> Config:
    """Defaults that follow the data, the SAE and the label store, for every key not in
    ``explicit`` (the full keys a user set, e.g. ``{"concept.concept_dim"}``): the vocabulary
    from the data; ``concept_dim`` and ``sae_layer`` from the SAE; ``concept_dim`` and
    ``k_attr`` from a label store."""
    cc, obj = cfg.concept, cfg.objective
    if "model.vocab_size" not in explicit:
        cfg.model.vocab_size = meta["vocab_size"]
    if obj.sae and not obj.label_store:
        from .models.sae import load_sae

        sae = load_sae(obj.sae).cfg
        if "concept.concept_dim" not in explicit:
            cc.concept_dim = sae.latents
        if "objective.sae_layer" not in explicit and sae.layer is not None:
            obj.sae_layer = sae.layer
    if obj.label_store:
        from .labels import LabelStore

        store = LabelStore(obj.label_store)
        if "concept.concept_dim" not in explicit:
            cc.concept_dim = store.latents
        if "objective.k_attr" not in explicit:
            obj.k_attr = store.k_attr
    return cfg


def make_run(cfg: Optional[Config], data_dir: str | Path, out_dir: str | Path,
             resume: Resume = False, force: bool = False, model: Optional[nn.Module] = None):
    """A ready trainer for ``cfg`` on ``data_dir``, writing ``out_dir``.

    ``resume=True`` continues the run in ``out_dir`` (with the config it was started with when
    ``cfg`` is None, see :func:`resumed_config`); ``"auto"`` continues it when it holds a checkpoint and otherwise starts
    afresh (replacing what is there). A new run refuses a non-empty ``out_dir`` unless ``force``;
    the old directory is removed only once the new run is built. ``model`` starts from given
    weights instead of a fresh initialisation.
    """
    from .models import build_model, family_args
    from .objectives import build_objective
    from .trainer import Trainer

    out = Path(out_dir)
    if cfg is not None:
        obj = cfg.objective
        files.refuse_inputs(out, (data_dir, obj.teacher, obj.sae, obj.label_store))
    if resume == "auto":
        resume = RunDirectory(out).has_checkpoint()
        force = not resume
    RunDirectory.check(out, resume, force)
    if resume:
        cfg = cfg or resumed_config(out)
    if cfg is None:
        raise ConfigError("a new run needs a config")
    validate(cfg)
    mixing = cfg.train.mode in ("cocomix", "pause")  # the architecture's checks come first
    family_args(cfg.model, cfg.concept if mixing else None, pause=cfg.train.mode == "pause")
    objective = build_objective(cfg, load_meta(data_dir))
    if model is None:
        model = build_model(cfg.model, seed=cfg.train.seed, mode=cfg.train.mode,
                            concept=cfg.concept)
    trainer = Trainer(cfg, model, objective, data_dir, out)
    if resume:
        trainer.resume()
    else:
        trainer.run_dir.clear()
    return trainer


def resumed_config(out_dir: str | Path) -> Config:
    """The config of the run in ``out_dir`` (after finishing an interrupted save)."""
    from .trainer import config_from_checkpoint

    RunDirectory.check(out_dir, resume=True, force=False)
    return config_from_checkpoint(out_dir)
