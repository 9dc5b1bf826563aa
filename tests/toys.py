"""A toy membership problem where members are made separable: members get confident, correct,
insensitive outputs; non-members flatter, more sensitive ones."""

import jax.numpy as jnp
import numpy as np

from jaxmia import features


def toy_features(n: int = 400, c: int = 4, seed: int = 1, gap: float = 6.0):
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += np.where(member, gap, 0.5)
    f = {k: np.asarray(v) for k, v in features.extract(jnp.asarray(logits),
                                                        jnp.asarray(labels)).items()}
    f["labels"] = labels
    f["sensitivity"] = np.abs(rng.normal(size=(n, c))) * np.where(member, 0.2, 1.0)[:, None]
    ref_logits = rng.normal(size=(60, c))
    ref = {k: np.asarray(v) for k, v in features.extract(
        jnp.asarray(ref_logits), jnp.asarray(ref_logits.argmax(-1))).items()}
    f["reference"] = ref
    for name, scale in (("label_aug", 1.0), ("label_noise", 1.0), ("label_boundary", 3.0),
                        ("label_synonym", 1.0)):
        f[name] = scale * np.clip(np.where(member, 0.8, 0.4) + 0.2 * rng.normal(size=n), 0, 1)
    return f, member


def write_toy_wordnet(folder, synsets: dict) -> str:
    """WordNet database files (wndb(5): a license header, then one synset a line; the word count
    in hex, a lex_id after each word, pointers and a gloss that the reader ignores) under
    ``folder``, from ``{'noun' | 'verb' | 'adj' | 'adv': [[lemma, ...], ...]}``. Returns the
    folder."""
    import os

    os.makedirs(folder, exist_ok=True)
    types = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
    for pos, ss_type in types.items():
        lines = ["  1 This software and database is being provided to you, the LICENSEE, by  ",
                 "  2 Princeton University under the following license.  "]
        for k, lemmas in enumerate(synsets.get(pos, [])):
            words = " ".join(f"{w} 0" for w in lemmas)
            lines.append(f"{1740 + 100 * k:08d} 00 {ss_type} {len(lemmas):02x} {words} 001 "
                         f"= 05200169 n 0000 | a gloss; \"an example\"  ")
        with open(os.path.join(folder, f"data.{pos}"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(folder)


def toy_ensemble(num_models: int = 3):
    """Three small MLPs on 4-class Gaussian data with per-model train/dev rows of different
    sizes (the sharding and multi-host scripts' problem): model, params, state, data, keys."""
    import jax

    from jaxmia import models, training

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 8)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0)).astype(np.int32)
    train = [rng.permutation(180)[:150 - 7 * k] for k in range(num_models)]
    dev = [np.arange(180, 240 - 5 * k) for k in range(num_models)]
    model = models.make("mlp", 4, (8,))
    keys = jax.random.split(jax.random.key(42), num_models)
    params, state = training.init_ensemble(model, keys)
    return model, params, state, training.make_ensemble_data(x, y, train, dev), keys



def write_toy_sst2(root, train_rows: int = 200, dev_rows: int = 40, seed: int = 0) -> str:
    """GLUE-format SST-2 files under ``root/glue/SST-2``: six filler words, then the sentiment as
    one word ('great' = 1, 'awful' = 0), so a small BERT learns it in a few epochs. Returns the
    data directory (``root``)."""
    rng = np.random.default_rng(seed)
    words = ["the", "film", "plot", "was", "quite", "acting", "very", "story", "a", "and"]

    def rows(n):
        out = []
        for _ in range(n):
            label = int(rng.integers(2))
            text = " ".join(rng.choice(words, 6)) + (" great" if label else " awful")
            out.append(f"{text}\t{label}")
        return "sentence\tlabel\n" + "\n".join(out) + "\n"

    folder = root / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(rows(train_rows))
    (folder / "dev.tsv").write_text(rows(dev_rows))
    return str(root)
