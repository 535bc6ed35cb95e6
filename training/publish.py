"""A trained model leaves the run: the fine-tuned Hugging Face folder (``save_final``), then
the next version of the model repository with its manifest (``export_trained``: base model,
data, split, hyper-parameters, validation metrics, render options, blend, text offset)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from contract.blend import Blend
from contract.model_spec import MODEL_BLEND, SHARED_PREFIX, ModelSpec
from export.base_model import default_base_model, describe_base_model
from export.build import run_export
from export.engines import EngineCheckError
from export.tiny import TOKENIZER_FILES
from interactions.movielens import id_sort_key
from training.config import TrainConfig
from training.data import TrainingData, describe_data
from training.encoder import TrainEncoder

if TYPE_CHECKING:  # annotations only: training.train imports this module, training.model needs torch
    from training.model import Trainee
    from training.train import TrainResult


def save_final(trainee: Trainee, cfg: TrainConfig, work_dir: Path) -> Path:
    """The trained embeddings merged back, the model in eval mode and saved with its
    tokenizer as ``work_dir/final`` (a Hugging Face folder)."""
    trainee.split_emb.merge()
    trainee.model.eval()
    final = Path(work_dir) / "final"
    shutil.rmtree(final, ignore_errors=True)
    trainee.model.save_pretrained(final)
    _write_tokenizer(trainee.tokenizer, Path(cfg.base_model) if cfg.base_model else None, final)
    return final


def _write_tokenizer(tokenizer, base: Path | None, out: Path) -> None:
    base = base or default_base_model()
    for name in TOKENIZER_FILES:
        if name != "tokenizer.json" and (base / name).is_file():
            shutil.copy2(base / name, out / name)
    tokenizer.save(str(out / "tokenizer.json"))


def export_trained(hf_dir: Path, repo: Path, cfg: TrainConfig, data: TrainingData, result: TrainResult,
                   *, log: Callable[[str], object] = print, spec: ModelSpec | None = None) -> int:
    """Export the fine-tuned folder as the next version, manifest included."""
    options = cfg.render_options()
    if spec is None and cfg.scoring == SHARED_PREFIX:
        spec = ModelSpec.shared_prefix(pool=cfg.pool)
    elif spec is None:
        # Item-ID pairs are short (history + 4 tokens): a 16-token bucket halves serving cost.
        spec = ModelSpec(seq_buckets=(16, 32, 64, 128, 256)) if options.item_tokens else ModelSpec()
    base = Path(cfg.base_model) if cfg.base_model else default_base_model()
    # Verify the graph on pairs rendered with this model's own options (its item tokens).
    enc = TrainEncoder(Tokenizer.from_file(str(hf_dir / "tokenizer.json")), options, data.items, spec.max_seq_len)
    users = data.split.users[:2]
    extra = []
    for u in users:
        h = data.split.history(u, "valid")[:cfg.history_items]
        cands = [i for i, _ in data.knn.retrieve(h, 3)]
        user_text, item_texts = enc.texts(h, cands)
        extra += [(user_text, t) for t in item_texts]
    training = _training_record(cfg, data, result, base)
    item_tokens = sorted(data.warm_items, key=id_sort_key) if options.item_tokens else []
    metrics = {"validation": {k: v for k, v in result.valid.items() if k != "grid"},
               "validation_blend_grid": result.valid.get("grid", [])}

    def export(engine: str) -> int:
        version, _ = run_export(hf_dir, repo, spec=spec, training=training, metrics=metrics,
                                render=options.to_dict(), extra_pairs=extra, engine=engine,
                                item_tokens=item_tokens, text_offset=result.valid["text_offset"]["offset"],
                                blend=Blend.from_dict(result.valid["blend"], name=MODEL_BLEND),
                                base_model=f"fine-tuned from {describe_base_model(base)}",
                                log=lambda m: log(m))
        return version

    try:
        return export(cfg.engine)
    except (EngineCheckError, ImportError) as exc:
        if cfg.engine == "onnxruntime":
            raise
        # A model that trained fine must still be served: fp32 is always accepted.
        log(f"export: engine {cfg.engine} not used ({exc}); exporting with onnxruntime (fp32)")
        return export("onnxruntime")


def _training_record(cfg: TrainConfig, data: TrainingData, result: TrainResult, base: Path) -> dict:
    """The manifest's ``training`` section: base model, data, objective, config, the run."""
    return {
        "base_model": describe_base_model(base),
        "data": describe_data(data),
        "objective": "next-item prediction on train sequences; listwise softmax over 1 positive + "
                     f"{cfg.negatives} negatives ({cfg.hard_negatives:.0%} from ItemKNN top-{cfg.retriever_k})"
                     + (f", plus {cfg.distill:g} x listwise KL to a transition-count teacher on the same lists"
                        if cfg.distill > 0 else ""),
        "config": cfg.to_dict(),
        "steps": result.steps, "pairs": result.pairs, "train_seconds": round(result.train_s, 1),
        "pairs_per_second": round(result.pairs_per_s, 1), "final_loss": round(result.final_loss, 4),
        "stopped_by": result.stopped_by,
        "blend_chosen_on": "validation NDCG@10",
        "cold_start": {"id_dropout": cfg.id_dropout, "history_id_dropout": cfg.history_id_dropout,
                       "holdout_share": cfg.cold_holdout, "holdout_seed": cfg.cold_seed,
                       "held_out_items": sorted(data.cold, key=id_sort_key)},
    }
