"""Command line: ``robustseg <command>`` == ``python -m common <command>`` (a `fire` CLI).

Every command imports its implementation lazily so that ``robustseg --help`` stays fast. A
:class:`~common.errors.RobustsegError` raised by a command is printed as one line (``error: ...``) and the process
exits with status 2; commands that find problems in the user's data (``data check``) exit with status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable

import fire

from common.errors import end_progress_bars, find_user_error, format_user_error
from common.report.options import ReportOptions  # a dataclass only: the report package loads its parts lazily
from common.utils.allocator import keep_freed_memory

_FLAG_TYPES = {"baseline": "str | None"}  # the command line names one reference model


def _report_options_as_flags(command: Callable[..., str]) -> Callable[..., str]:
    """Give a command the fields of :class:`ReportOptions` as flags, after its own arguments.

    fire reads the flags (names, types, defaults) from ``__signature__`` and their help from the command's docstring;
    the command receives them checked, as one ``options`` argument.
    """
    own = [p for name, p in inspect.signature(command).parameters.items() if name != "options"]
    flags = [
        inspect.Parameter(
            field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=field.default,
            annotation=_FLAG_TYPES.get(field.name, field.type),
        )
        for field in dataclasses.fields(ReportOptions)
    ]  # fmt: skip
    signature = inspect.signature(command).replace(parameters=own + flags)

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> str:
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        values = dict(arguments.arguments)
        options = ReportOptions(**{field.name: values.pop(field.name) for field in dataclasses.fields(ReportOptions)})
        return command(**values, options=options)

    run.__signature__ = signature  # type: ignore[attr-defined]
    return run


class Data:
    """Data sets: the embedded synthetic BraTS-like data, real BraTS/MSD datalists, input checks, figures."""

    def synth(self, out: str, subjects: int = 40, seed: int = 0, shape: int = 96, test_fraction: float = 0.2) -> str:
        """Write ``subjects`` synthetic BraTS-like subjects and ``datalist.json`` under ``out``.

        Args:
            out: output folder (created if missing; an existing synthetic data set there is regenerated).
            subjects: number of subjects.
            seed: random seed; the same seed gives identical voxel arrays.
            shape: edge length of the cubic grid in voxels.
            test_fraction: share of subjects in the datalist's ``testing`` list (the paper's 20 %).
        """
        from common.data.synthetic import write_synthetic_dataset

        path = write_synthetic_dataset(out, subjects=subjects, seed=seed, shape=shape, test_fraction=test_fraction)
        return f"wrote {subjects} subjects and {path}"

    def show(self, subject_dir: str, out: str = "subject.png") -> str:
        """Save a figure of one subject: four contrasts and the label overlay in three planes."""
        from common.data.show import show_subject

        return f"wrote {show_subject(subject_dir, out)}"

    def datalist(self, root: str, out: str = "datalist.json", test_fraction: float = 0.2, seed: int = 0) -> str:
        """Write a MONAI datalist (seeded train/test split) for a BraTS 2017-2021 or MSD Task01 folder."""
        from common.data.datalist import write_datalist

        path = write_datalist(root, out, test_fraction=test_fraction, seed=seed)
        return f"wrote {path}"

    def check(self, path: str, require_labels: bool = True) -> str:
        """Check a data folder or datalist; print one line per problem and exit 1 if there is any."""
        from common.data.check import check_dataset

        problems, n_subjects = check_dataset(path, require_labels=require_labels)
        if problems:
            for line in problems:
                print(line, file=sys.stderr)
            raise SystemExit(1)
        return f"ok: {n_subjects} subjects in {path} passed all checks"


class Bundles:
    """Generate, check, export and import the MONAI bundles under ``bundles/``."""

    def generate(self, check: bool = False, root: str = "bundles") -> str:
        """Write every bundle from its family template; with ``--check``, exit 1 if a committed bundle differs."""
        from common.bundles import generate_bundles

        differences = generate_bundles(root, check=check)
        if check and differences:
            for line in differences:
                print(line, file=sys.stderr)
            raise SystemExit(1)
        return "bundles match their templates" if check else f"generated bundles under {root}"

    def export(self, name: str, out: str | None = None, root: str = "bundles") -> str:
        """Export a trained bundle as a self-contained Model Zoo zip (configs, docs, weights, a copy of common/)."""
        from common.bundles import export_bundle

        return f"wrote {export_bundle(name, out, root=root)}"


def _import_bundle(
    self: Bundles, archive: str, root: str = "bundles", name: str | None = None, force: bool = False
) -> str:
    """Import a Model Zoo bundle zip into ROOT/NAME (checked as untrusted: no path escapes, symlinks or zip bombs).

    Accepts the zip `bundles export` writes (one top folder) or one with configs/metadata.json at the top. Nothing
    is run; but a bundle's configs run code when used (`_target_`, `$` expressions): import only trusted bundles.

    Args:
        archive: the bundle zip.
        root: the folder holding the bundles.
        name: the bundle's folder name (default: the zip's top folder, else metadata.json's name, else the zip's stem).
        force: replace an existing ROOT/NAME (atomically: the old one stays if the import fails).
    """
    from common.bundle_import import import_bundle
    from common.errors import RobustsegError

    if isinstance(name, bool) or isinstance(root, bool):  # fire gives True for a flag without a value
        raise RobustsegError("--name/--root: given without a value; expected --name NAME or --root FOLDER.")
    name = None if name is None else str(name)  # fire turns --name 2024 into an int
    return f"imported {import_bundle(str(archive), root=str(root), name=name, force=force)}"


# `import` is a Python keyword: fire finds the command by getattr, so it is set under that name
_import_bundle.__name__ = _import_bundle.__qualname__ = "import"
setattr(Bundles, "import", _import_bundle)


class CLI:
    """robustseg: adversarial and artifact robustness of brain-tumour segmentation networks, as MONAI bundles."""

    def __init__(self) -> None:
        self.data = Data()
        self.bundles = Bundles()

    def segment(self, bundle: str, input: str, output: str, device: str = "cpu") -> str:  # noqa: A002
        """Segment one subject (a BraTS subject folder or four NIfTI files t1,t1ce,t2,flair) with a trained bundle."""
        from common.engines.segment import segment

        return f"wrote {segment(bundle, input, output, device=device)}"

    def attack(
        self,
        bundle: str | list[str],
        data: str,
        out: str = "runs/attack",
        preset: str = "paper",
        epsilons: list[float] | str | None = None,
        config_file: str | list[str] = "configs/inference.json",
        overrides: dict | str | None = None,
        input_channels: list[str] | None = None,
        output_channels: list[str] | None = None,
        output_activation: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        ensemble_steps: int | None = None,
        task: str | None = None,
    ) -> str:
        """Attack any MONAI bundle (robustseg's or a Model Zoo one) on a data set; write results, tables, report.

        Args:
            bundle: a bundle folder or name, or a list of them ("[a,b]"); third-party bundles run on their own
                preprocessing, inferer, channel order and outputs (read from their metadata.json).
            data: a data folder with datalist.json (e.g. from `robustseg data synth`) or a datalist file.
            out: output folder (results/, report/); a rerun resumes.
            preset: "paper" (FGSM with its sweep, i-FGSM, ti-FGSM) or "worst-case" (plus the APGD/PGD ensemble).
            epsilons: attack radii, e.g. "[0.01,0.05]": relative to each subject's maximum absolute input intensity
                after the bundle's preprocessing (the preset's by default).
            config_file: the bundles' config files, merged in order.
            overrides: JSON of config ids -> values for every bundle, e.g. '{"inferer#roi_size": [64,64,64]}'.
            input_channels: a third-party bundle's input modalities in order, e.g. "[t1ce,t1,t2,flair]", if its
                metadata lacks inputs.image.channel_def.
            output_channels: a third-party bundle's output channel names, e.g. "[TC,WT,ET]", if its metadata lacks
                outputs.pred.channel_def.
            output_activation: "sigmoid" or "softmax", if the bundle's postprocessing does not say.
            device: "cpu", "cuda", ... (default: CUDA if available).
            batch_size: test subjects attacked together.
            ensemble_steps: steps per worst-case ensemble member (default 100; the demo uses 5, and 80 for APGD with
                the soft Dice).
            task: "brats" or "classes" (a generic task scored per class by its channel_def names), if the bundle's
                metadata does not tell (four input channels or BraTS output names: brats).
        """
        from common.attack import run_attack

        return run_attack(
            bundle, data, out, preset=preset, epsilons=epsilons, config_file=config_file, overrides=overrides,
            input_channels=input_channels, output_channels=output_channels, output_activation=output_activation,
            device=device, batch_size=batch_size, ensemble_steps=ensemble_steps, task=task,
        )  # fmt: skip

    def certify(
        self,
        bundle: str,
        data: str,
        out: str = "runs/certify",
        sigma: float = 0.25,
        n: int = 100,
        n0: int = 10,
        alpha: float = 0.001,
        tau: float = 0.75,
        radii: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5),
        correction: str = "holm",
        non_certified: str = "worst_case",
        batch_size: int = 8,
        seed: int = 0,
        device: str = "cpu",
        config_files: tuple[str, ...] = ("configs/inference.json",),
        attacks: object = "default",
        eot_samples: int = 4,
    ) -> str:
        """Certified and attacked Dice of a model bundle's smoothed segmenter on a datalist's test split, as CSV rows.

        Randomized smoothing with SegCertify's per-voxel certificates (a lower bound on the Dice under any L2
        perturbation of norm <= each radius), and L2 attacks on the smoothed segmenter at the same radii (an upper
        bound); both per radius are printed at the end.

        Args:
            bundle: a trained model bundle (folder or name).
            data: a datalist JSON or a folder holding datalist.json; its testing subjects are certified.
            out: output folder (results.csv rows with threat "certified", certify_settings.json).
            sigma: Gaussian noise level in input units (inputs are min-max normalised to [0, 1] per channel).
            n: estimation samples per subject.
            n0: selection samples per subject.
            alpha: family-wise error of each subject's certificate.
            tau: certification threshold in [0.5, 1).
            radii: L2 radii in input units, one row per subject and radius, e.g. "[0,0.1,0.25]".
            correction: "holm" (SegCertify's) or "bonferroni" (per-voxel radii).
            non_certified: "worst_case" (a non-certified voxel is a false negative inside a region and a false
                positive outside) or "abstain" (SegCertify's scoring: only a false negative inside).
            batch_size: noisy copies per forward pass.
            seed: noise seed.
            device: e.g. "cpu" or "cuda".
            config_files: the bundle's config files, e.g. "['configs/inference.json','configs/quick.json']".
            attacks: the L2 attacks on the smoothed segmenter at each radius > 0: "default" (APGD with soft Dice and
                PGD with masked CE, 10 steps each), "none", or a list of specs such as
                "[{'name':'APGD','loss':'soft_dice','steps':20}]" (epsilon, norm and relative are set for you).
            eot_samples: noise draws per attack step (the SmoothAdv surrogate).
        """
        from common.engines.certification import DEFAULT_SMOOTHED_ATTACKS, run_certification

        if attacks == "default":
            attacks = DEFAULT_SMOOTHED_ATTACKS
        elif attacks in ("none", None):
            attacks = []

        path, summary = run_certification(
            bundle, data, out, sigma=sigma, n=n, n0=n0, alpha=alpha, tau=tau, radii=radii, correction=correction,
            non_certified=non_certified, batch_size=batch_size, seed=seed, device=device,
            config_files=[config_files] if isinstance(config_files, str) else list(config_files),
            attacks=attacks, eot_samples=eot_samples,  # type: ignore[arg-type]
        )  # fmt: skip
        attacked = summary["attacked"]
        lines = [f"wrote {path}", "mean Dice over this run's subjects (certified: lower bound; attacked: the worst of "
                 "the L2 attacks on the smoothed model and its clean input, an upper bound)",
                 "radius   certified WT    TC    ET" + ("   attacked WT    TC    ET" if attacked else "")]  # fmt: skip
        for r, (wt, tc, et) in summary["certified"].items():
            line = f"{r:<8g} {wt:12.3f} {tc:5.3f} {et:5.3f}"
            if r in attacked:
                line += " {:13.3f} {:5.3f} {:5.3f}".format(*attacked[r])
            lines.append(line)
        return "\n".join(lines)

    @_report_options_as_flags
    def stats(self, csv: str, out: str = "stats", options: ReportOptions | None = None) -> str:
        """Tables like the paper's Tables 1-3 (mean +- sd, Wilcoxon, Bonferroni) from a robustness CSV.

        Args:
            csv: the evaluation bundle's ``results.csv``.
            out: output folder (Markdown and CSV per table, plus ``tables.md``).
            epsilon: the epsilon of Table 1 (the paper: 0.05).
            epsilons: the epsilon columns of Tables 2/3 (the paper: 0, 0.05, 0.1).
            attack: the attack of Tables 2/3 (the paper: FGSM).
            loss: the attack loss to tabulate when the CSV holds several.
            baseline: the undefended model to compare against when a net has several.
            alpha: significance level before Bonferroni correction.
        """
        from common.report.tables import write_tables

        written = write_tables(csv, out, options)
        return "wrote " + ", ".join(str(p) for p in written)

    @_report_options_as_flags
    def report(
        self,
        csv: str,
        out: str = "report",
        settings: str | None = None,
        examples: str | None = None,
        options: ReportOptions | None = None,
    ) -> str:
        """The full robustness report (tables, figures, self-contained report.html) from a robustness CSV.

        Args:
            csv: the evaluation bundle's ``results.csv``.
            out: output folder.
            settings: a ``settings.json`` describing the run (default: the one beside the CSV, if any).
            examples: the folder of example volumes (default: ``examples/`` beside the CSV, if any).
            epsilon: the epsilon of Table 1 and of the slice panels.
            epsilons: the epsilon columns of Tables 2/3.
            attack: the attack of Tables 2/3 and of the epsilon figures.
            loss: the attack loss to report when the CSV holds several.
            baseline: the undefended model to compare against when a net has several.
            alpha: significance level before Bonferroni correction.
        """
        from common.report.html import write_report

        path = write_report(csv, out, settings=settings, examples=examples, options=options)
        return f"wrote {path}"

    def demo(
        self,
        out: str = "runs/demo",
        fresh: bool = False,
        preset: str = "paper",
        artaug: bool = False,
        gaussaug: bool = False,
    ) -> str:
        """The main job on the embedded data: train baseline and defences, attack them, write the report.

        Args:
            out: the demo folder (stages done before are skipped).
            fresh: delete ``out`` first.
            preset: "paper" (the paper's attacks) or "worst-case" (adds the APGD/PGD ensemble; after a paper demo
                only the ensemble runs).
            artaug: also fine-tune and evaluate the artifact-augmentation defence (brats_unet3d_artaug); after a demo
                without it only that model trains and is evaluated.
            gaussaug: also fine-tune and evaluate the Gaussian-augmentation defence at sigma = 0.25
                (brats_unet3d_gaussaug_sigma0.25, the base network of robustseg certify --sigma 0.25); after a demo
                without it only that model trains and is evaluated.
        """
        from common.demo import run_demo

        return run_demo(out, fresh=fresh, preset=preset, artaug=artaug, gaussaug=gaussaug)

    def reproduce(
        self,
        data: str,
        out: str = "runs/reproduce",
        device: str = "cuda",
        dry_run: bool = False,
        quick: bool = False,
        distillation: str = "paper",
    ) -> str:
        """The paper's full protocol on real BraTS data (all 26 model bundles, evaluation, report).

        Args:
            data: a BraTS 2017-2021 or MSD Task01 folder.
            out: output folder.
            device: e.g. "cuda" or "cpu".
            dry_run: print the plan only.
            quick: use the quick overlays.
            distillation: "paper": train a teacher at each T and distil from its soft labels at T (Papernot et al.
                2016, 8 more trainings); "approx": the baseline as teacher, soft labels at T = 1.
        """
        from common.demo import run_reproduce

        return run_reproduce(data, out, device=device, dry_run=dry_run, quick=quick, distillation=distillation)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``robustseg`` console script."""
    keep_freed_memory()  # before any tensor: glibc would hand freed tensor memory back and fault it in again
    try:
        result = fire.Fire(CLI, command=argv, name="robustseg")
    except SystemExit:
        raise
    except Exception as exc:  # one line for user errors, a traceback for bugs
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        end_progress_bars()
        print(format_user_error(user_error), file=sys.stderr)
        raise SystemExit(2) from None
    del result


if __name__ == "__main__":
    main()
