"""The robustness evaluation of third-party bundles whose task is not BraTS: scored per class by their own names.

A MONAI bundle that segments a spleen in CT or the zones of a prostate has a generic task (:class:`ClassTask`: the
classes of its ``outputs.pred.channel_def``, labels = channel indices). :class:`ClassEvaluation` attacks it on the
``testing`` subjects of a datalist (``image``, ``label`` entries) with the attacks of :mod:`common.attacks`, each
given the task (the same loss names, checked labels, per-class scoring of the best iterate), and writes:

* ``results.csv``: one row per model, subject, attack and epsilon: ``model, subject, attack, threat, loss, epsilon,
  steps, iteration, dice_<class>..., dice_mean, linf, seconds, winner, attack_config`` (``threat``: ``clean``,
  ``white-box``, or ``worst-case``: per subject and epsilon the row of lowest mean Dice over every attack at that
  epsilon, the random-sign control included (:func:`worst_case_rows`), ``attack`` = ``ensemble``, ``winner``
  naming the attack and loss that gave it);
* ``settings.json``: the models (bundle, weights hash, the adapter's task, classes and inferer), the attacks, where
  epsilon lives and the package versions; a rerun with the same settings keeps the subjects already evaluated;
* ``tables/``: per model, mean ± sd Dice per class under each attack (Markdown and CSV), and the worst case.

The attacks perturb the network's input on its own grid and aim at the label resampled onto it (nearest neighbour);
the Dice is scored where the bundle's own inference puts its output: when the preprocessing moves the grid
(``Orientationd``, ``Spacingd``), the class probabilities are inverted onto the stored label's grid
(:meth:`~common.engines.zoo_bundle.ClassPreprocessing.invert`, MONAI's ``Invertd``) before the argmax, so the clean
Dice is that of the bundle's own ``inference.json`` outputs.

The report (:func:`write_class_report`) renders the tables and a Dice-vs-epsilon figure. BraTS bundles (robustseg's
and the Model Zoo's ``brats_mri_segmentation``) go through ``brats_robustness_eval`` instead, with its corruptions,
defences, certificates and statistics; this evaluation has none of those (see the README's limits).

Example::

    models = [load_model_bundle("bundles/spleen_ct_segmentation")]
    ClassEvaluation(models, "data/spleen/datalist.json", "runs/spleen/results", CLASS_PAPER_ATTACKS, [0.05]).run()
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.attacks.registry import make_attack
from common.data.task import ClassTask, score_columns
from common.engines.model_bundle import ModelBundle
from common.engines.results_io import package_versions
from common.engines.subject_batch import subject_id, test_entries
from common.errors import RobustsegError
from common.report.table import Table, format_mean_sd
from common.utils.files import write_atomic

__all__ = ["CLASS_PAPER_ATTACKS", "ClassEvaluation", "class_tables", "worst_case_rows"]

CLASS_PAPER_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "FGSM"},
    {"name": "i-FGSM", "steps": 10},
    {"name": "ti-FGSM", "steps": 10, "target": "background"},
    {"name": "random-sign"},
)
"""The paper's attacks (Liu et al. 2021: FGSM, i-FGSM, ti-FGSM, with its soft-Dice loss) and the random-sign control,
for a generic task; ti-FGSM aims every voxel at the background (the classes vanish), ``target: "background"``."""

_LEAD = ["model", "subject", "attack", "threat", "loss", "epsilon", "steps", "iteration"]
_TAIL = ["dice_mean", "linf", "seconds", "winner", "attack_config"]
EPSILON_SPACE = (
    "the network's input after the bundle's own preprocessing; epsilon is relative to each subject's maximum absolute "
    "input intensity (an intensity-windowed CT scaled to [0, 1]: epsilon itself)"
)


def _task(models: Sequence[ModelBundle]) -> ClassTask:
    """The task shared by every model, checked."""
    tasks = {m.name: m.task for m in models}
    generic = [t for t in tasks.values() if isinstance(t, ClassTask)]
    if len(generic) != len(models):
        brats = sorted(n for n, t in tasks.items() if not isinstance(t, ClassTask))
        raise RobustsegError(f"models: {brats} segment BraTS; a run evaluates either BraTS bundles or bundles of one "
                             "generic task, not both.")  # fmt: skip
    if len({t.names for t in generic}) > 1:
        found = {n: list(t.names) for n, t in tasks.items()}
        raise RobustsegError(f"models: their classes differ ({found}); a run compares bundles of one task.")
    return generic[0]


def _attack_spec(spec: Mapping[str, Any], task: ClassTask) -> dict[str, Any]:
    """A spec with a class name as ti-FGSM's target put as its index (``"background"``: the task's background)."""
    out = dict(spec)
    target = out.get("target")
    if isinstance(target, str):
        index = task.background if target == "background" else (
            task.names.index(target) if target in task.names else None)  # fmt: skip
        if index is None:
            raise RobustsegError(f"attacks: target {target!r} is no class of {list(task.names)}.")
        out["target"] = index
    return out


def worst_case_rows(rows: Sequence[Mapping[str, Any]], epsilons: Sequence[float]) -> list[dict[str, Any]]:
    """One subject's ``worst-case`` rows: per epsilon, the white-box row of lowest ``dice_mean``.

    Every white-box input, the random-sign control included, is a perturbation inside the same epsilon-ball, so the
    attacker may pick any of them, as :mod:`common.engines.worst_case` does for BraTS: leaving one out could only
    raise the worst case, i.e. overstate robustness.

    Args:
        rows: the subject's rows (``threat``, ``epsilon``, ``dice_mean``, ``attack``, ``loss`` ...).
        epsilons: the epsilons to take the worst case at.

    Returns:
        One row per epsilon with white-box rows: the winner's row with ``attack`` ``ensemble``, ``threat``
        ``worst-case`` and the winner named in ``winner``; ties go to the first.
    """
    out = []
    for eps in epsilons:
        candidates = [r for r in rows if r["threat"] == "white-box" and r["epsilon"] == eps]
        if candidates:
            worst = min(candidates, key=lambda r: r["dice_mean"])
            out.append({**worst, "attack": "ensemble", "threat": "worst-case", "loss": "", "seconds": "",
                        "winner": f"{worst['attack']} ({worst['loss']})", "attack_config": ""})  # fmt: skip
    return out


class ClassEvaluation:
    """Attack and score bundles of one generic task (see the module docstring).

    Args:
        models: the loaded bundles (:func:`~common.engines.model_bundle.load_model_bundle`), each with a
            :class:`~common.data.task.ClassTask`, all of the same classes.
        datalist: the datalist whose ``testing`` entries are evaluated (``image``: a file or a list, ``label``).
        output_dir: where ``results.csv``, ``settings.json`` and ``tables/`` go.
        attacks: attack specs (:func:`~common.attacks.registry.make_attack`; ``loss`` defaults to ``loss``), each run
            at every epsilon.
        epsilons: the attack radii, relative to each subject's maximum absolute input intensity.
        ensemble: further attack specs (e.g. ``worst_case.json``'s APGD/PGD ensemble) run at every epsilon; with or
            without it every subject gets a worst-case row per epsilon over all its attacks at that epsilon.
        loss: the default attack loss (the paper's ``"soft_dice"``).
        device: where the networks run.

    Raises:
        RobustsegError: BraTS models, models of different classes, a bad attack spec or epsilon, or a datalist whose
            test subjects are missing or unlabelled.
    """

    def __init__(
        self,
        models: Sequence[ModelBundle],
        datalist: str | Path,
        output_dir: str | Path,
        attacks: Sequence[Mapping[str, Any]] = CLASS_PAPER_ATTACKS,
        epsilons: Sequence[float] = (0.05,),
        ensemble: Sequence[Mapping[str, Any]] = (),
        loss: str = "soft_dice",
        device: str | torch.device = "cpu",
    ) -> None:
        if not models:
            raise RobustsegError("models is empty; expected at least one model bundle.")
        self.models = list(models)
        self.task = _task(self.models)
        self.columns = score_columns(self.task)
        self.datalist = str(Path(datalist).resolve())
        self.entries = test_entries(self.datalist)
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.epsilons = sorted({float(e) for e in epsilons})
        specs = [{"loss": loss, **_attack_spec(s, self.task)} for s in [*attacks, *ensemble]]
        # built once now, so that a bad spec fails before any subject is attacked
        self.attacks = [
            make_attack({**spec, "epsilon": eps}, task=self.task) for eps in self.epsilons for spec in specs
        ]
        self.fields = [*_LEAD, *self.columns, *_TAIL]

    def settings(self) -> dict[str, Any]:
        """What produced the rows (``settings.json``); a rerun keeps earlier rows only if this is unchanged."""
        return {
            "task": self.task.describe(),
            "datalist": self.datalist,
            "epsilons": self.epsilons,
            "attacks": [repr(a) for a in self.attacks],
            "evaluation": {"epsilon_space": EPSILON_SPACE, "worst_case": "per subject and epsilon, the lowest mean "
                           "Dice over every white-box input at that epsilon (random-sign noise included)"},  # fmt: skip
            "models": [{**m.settings(), "adapter": m.adapter} for m in self.models],
        }

    def _earlier(self) -> list[dict[str, str]]:
        """The rows of an earlier run with the same settings (an interrupted run resumes), else none."""
        csv_path, settings_path = self.output_dir / "results.csv", self.output_dir / "settings.json"
        try:
            earlier = json.loads(settings_path.read_text())
            rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
        except (OSError, ValueError):
            return []
        same = {k: v for k, v in earlier.items() if k != "versions"} == json.loads(json.dumps(self.settings()))
        return rows if same and rows and list(rows[0]) == self.fields else []

    def run(self) -> Path:
        """Evaluate every model on every test subject; returns ``results.csv``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = self._earlier()
        done = {(r["model"], r["subject"]) for r in rows}
        write_atomic(self.output_dir / "settings.json",
                     json.dumps({**self.settings(), "versions": package_versions()}, indent=2))  # fmt: skip
        for entry in self.entries:
            subject = subject_id(entry)
            for model in self.models:
                if (model.name, subject) in done:
                    continue
                started = time.perf_counter()
                rows += self.evaluate(model, entry)
                self._write(rows)
                print(f"robustseg attack: {model.name} {subject} ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr)  # fmt: skip
        self._write(rows)
        tables = class_tables(rows, self.columns, self.task)
        for table in tables:
            write_atomic(self.output_dir / "tables" / f"{table.name}.md", table.to_markdown(), parents=True)
            write_atomic(self.output_dir / "tables" / f"{table.name}.csv", table.to_csv(), parents=True)
        return self.output_dir / "results.csv"

    def _write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=self.fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.output_dir / "results.csv", table.getvalue())

    def _load(self, model: ModelBundle, entry: Mapping[str, Any]) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """The network's input ``(1, C, *grid)``, the label on its grid (what the attacks aim at) and the scoring
        function ``logits -> Dice (1, n_classes)`` (on the label's stored grid when the preprocessing moved it)."""
        data = model.preprocessing(dict(entry))
        image = torch.as_tensor(data["image"]).as_subclass(Tensor).float()[None].to(self.device)
        label = torch.as_tensor(data["label"]).as_subclass(Tensor).long()[None].to(self.device)
        stored = data.get("label_original")
        try:
            for value in (label, stored):
                if value is not None:
                    self.task.check_labels(torch.as_tensor(value).long())
        except RobustsegError as exc:
            raise RobustsegError(f"{entry.get('label')}: {exc} (the classes of {model.name}: "
                                 f"{list(self.task.names)}, labels 0 .. {len(self.task.names) - 1}).") from None
        if not torch.isfinite(image).all():
            raise RobustsegError(f"{entry.get('image')}: the preprocessed image of {model.name} holds NaN or inf.")
        if stored is None:
            return image, label, lambda logits: self.task.dice(self.task.predict(logits), label)
        truth = torch.as_tensor(stored).as_subclass(Tensor).long()[None].to(self.device)
        meta = data["image"]

        def score(logits: Tensor) -> Tensor:
            # the bundle's own postprocessing: probabilities inverted onto the stored grid (linear), then argmax
            probabilities = model.preprocessing.invert(torch.softmax(logits.float(), 1)[0].cpu(), meta)
            prediction = torch.as_tensor(probabilities).as_subclass(Tensor).to(self.device)[None]
            return self.task.dice(self.task.predict(prediction), truth)

        return image, label, score

    def _row(self, model: ModelBundle, subject: str, dice: Tensor, **cells: Any) -> dict[str, Any]:
        values = dice[0].tolist()
        return {"model": model.name, "subject": subject, **dict(zip(self.columns, values, strict=True)),
                "dice_mean": float(np.mean(values)), **cells}  # fmt: skip

    def evaluate(self, model: ModelBundle, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows of one model on one subject: clean, every attack at every epsilon, and the worst case."""
        subject = subject_id(entry)
        image, label, score = self._load(model, entry)
        network = model.network
        with torch.no_grad():
            clean = score(network(image))
        rows = [self._row(model, subject, clean, attack="none", threat="clean", loss="", epsilon=0.0,
                          steps=0, iteration=0, linf=0.0, seconds="", winner="", attack_config="")]  # fmt: skip
        for attack in self.attacks:
            started = time.perf_counter()
            adversarial = attack(network, image, label)
            seconds = time.perf_counter() - started
            with torch.no_grad():
                dice = score(network(adversarial))
            rows.append(self._row(
                model, subject, dice, attack=attack.name, threat="white-box", loss=str(attack.loss),
                epsilon=attack.epsilon, steps=attack.steps, iteration=attack.steps,
                linf=float((adversarial - image).abs().max()), seconds=round(seconds, 3), winner="",
                attack_config=repr(attack)))  # fmt: skip
        return rows + worst_case_rows(rows, self.epsilons)


def _number(value: Any) -> float:
    return float(value) if value not in ("", None) else math.nan


def class_tables(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], task: ClassTask) -> list[Table]:
    """Per model, the mean ± sd (over subjects) Dice of each class and their mean under each attack and epsilon.

    Args:
        rows: the rows of ``results.csv`` (as written or read back).
        columns: the Dice columns (:func:`~common.data.task.score_columns`).
        task: the task (its class names head the columns).

    Returns:
        One :class:`~common.report.table.Table` per model, rows in the order clean, each attack, worst case.
    """
    tables = []
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        groups: dict[tuple[str, str, str, float], list[Mapping[str, Any]]] = {}
        for row in rows:
            if row["model"] == model:
                key = (str(row["threat"]), str(row["attack"]), str(row["loss"]), _number(row["epsilon"]))
                groups.setdefault(key, []).append(row)
        order = sorted(groups, key=lambda k: (k[3], {"clean": 0, "white-box": 1}.get(k[0], 2)))
        header = ["Attack", "Loss", "ε", *task.score_names, "Mean", "n"]
        body, long = [], []
        for threat, attack, loss, eps in order:
            group = groups[(threat, attack, loss, eps)]
            cells = []
            for column in [*columns, "dice_mean"]:
                values = np.array([_number(r[column]) for r in group])
                sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
                cells.append(format_mean_sd(float(values.mean()), sd, 3))
                long.append([model, threat, attack, loss, eps, column, float(values.mean()), sd, len(values)])
            name = "worst case" if threat == "worst-case" else attack
            body.append([name, loss or "–", f"{eps:g}", *cells, str(len(group))])
        winners = [str(r["winner"]) for r in rows if r["model"] == model and r["threat"] == "worst-case"]
        notes = []
        if winners:
            counts = {w: winners.count(w) for w in dict.fromkeys(winners)}
            notes.append("Worst case won by (subjects × epsilons): "
                         + ", ".join(f"{w} {n}" for w, n in sorted(counts.items(), key=lambda x: -x[1])))  # fmt: skip
        tables.append(Table(
            name=f"dice_{model}", title=f"Dice per class, {model}",
            caption=("Mean ± sd over the test subjects of the Dice of each class (background not scored) under each "
                     "white-box attack (L-inf, epsilon relative to the subject's maximum absolute input after the "
                     "bundle's preprocessing) and the per-subject worst case over every input at that epsilon "
                     "(random-sign noise included)."),
            header=header, rows=body, notes=notes,
            csv_header=["model", "threat", "attack", "loss", "epsilon", "column", "mean", "sd", "n"], csv_rows=long,
        ))  # fmt: skip
    return tables
