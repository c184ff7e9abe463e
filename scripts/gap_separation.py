"""How well the per-sample modality gap separates corrupted samples (avdigits).

Trains the warm-up model of a config (``concat``: L_f, or ``warmup_objective``: Eq. 10)
for its epochs, then on the training split (evaluation pass) computes the prob gap
(Eq. 5) and the KL gap (Eq. 6) of audio vs visual, prints a text histogram of each, the
AUROC of the gap against the ground-truth corruption mask, and the AUROC of the mixture
posterior w1 (gmm / smm / lmm fitted to the z-scored gaps, as gap_adaptive does).

    .venv/bin/python scripts/gap_separation.py configs/demo.yaml [--set method.name=warmup_objective] [--epochs 4]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from raygap.checkpoint import load as load_checkpoint
from raygap.config import load_config
from raygap.methods.gaps import GAPS, auroc, zscore_stats
from raygap.mixtures import fit_mixture
from raygap.trial import run_trial
from raygap.trialfiles import CHECKPOINT


def text_hist(x: np.ndarray, mask: np.ndarray, bins: int = 20) -> str:
    edges = np.linspace(x.min(), x.max(), bins + 1)
    clean, _ = np.histogram(x[~mask], edges)
    bad, _ = np.histogram(x[mask], edges)
    scale = max(1, (clean + bad).max() // 50)
    rows = []
    for i in range(bins):
        rows.append(f"  {edges[i]:+7.3f} .. {edges[i + 1]:+7.3f} | " + "#" * (clean[i] // scale) + "x" * (bad[i] // scale)
                    + f"  ({clean[i]} clean, {bad[i]} corrupted)")
    return "\n".join(rows) + f"\n  (# clean, x corrupted; one mark = {scale} samples)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=None, help="warm-up epochs (default: the config's)")
    a = ap.parse_args()
    sets = list(a.set) + ([f"train.epochs={a.epochs}"] if a.epochs else [])
    cfg = load_config(a.config, sets)
    captured = {}

    from raygap import trial as T
    orig_fit = T.fit

    def fit_and_keep(cfg_, bundle, **kw):      # keep the trained model and data for the analysis
        res = orig_fit(cfg_, bundle, **kw)
        captured["bundle"] = bundle
        return res

    T.fit = fit_and_keep
    ckpt = "/tmp/raygap-gap-separation"
    import shutil
    shutil.rmtree(ckpt, ignore_errors=True)
    res = run_trial(cfg, checkpoint_dir=ckpt)
    T.fit = orig_fit
    bundle = captured["bundle"]
    ck = load_checkpoint(f"{ckpt}/{CHECKPOINT}")
    from raygap.methods import Method
    from raygap.models import build_model
    model = build_model(bundle.modalities, bundle.num_classes, cfg.model)
    model.load_state_dict(ck["model"])
    pred = T.predict_split(model, Method(None, None), bundle.train, batch_size=512, device=torch.device("cpu"))
    y = torch.as_tensor(pred["label"])
    mask = np.asarray(bundle.train.extras["corrupt_visual"], bool)[pred["index"]]
    print(f"{cfg.method.name}, {cfg.train.epochs} epochs: val acc {res.history[-1]['val_acc']:.3f} "
          f"(audio {res.history[-1]['val_acc_audio']:.3f}, visual {res.history[-1]['val_acc_visual']:.3f}); "
          f"{mask.sum()} of {len(mask)} training samples have a corrupted image")
    for name in ("prob", "kl"):
        g = GAPS[name](torch.as_tensor(pred["audio"]), torch.as_tensor(pred["visual"]), y).numpy()
        mu, sd = zscore_stats(g, 0.05)
        z = (g - mu) / sd
        print(f"\n{name} gap (audio - visual) on the training split: mean {g.mean():+.3f}, std {g.std():.3f}, "
              f"clean mean {g[~mask].mean():+.3f}, corrupted mean {g[mask].mean():+.3f}; "
              f"AUROC(gap vs corrupted) = {auroc(g, mask):.3f}")
        print(text_hist(g, mask))
        for fam, rule in (("gmm", "right_tail"), ("smm", "right_tail"), ("lmm", "right_tail"),
                          ("gmm", "nearest_zero"), ("gmm", "largest_weight")):
            f = fit_mixture(fam, z, seed=cfg.seed, origin=-mu / sd, balanced=rule)
            w1 = f.posterior(z)[:, 1]
            print(f"  {fam} ({rule}): pi {np.round(f.weights, 3).tolist()} mu(z) {np.round(f.means, 3).tolist()} "
                  f"-> AUROC(w1 vs corrupted) = {auroc(w1, mask):.3f}, frac w1>0.5 = {(w1 > 0.5).mean():.3f}"
                  + (f" [fallback: {f.fallback}]" if f.fallback else ""))


if __name__ == "__main__":
    main()
