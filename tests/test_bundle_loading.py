"""The bundle loads where bundles are loaded: copied on its own, by Model Zoo's checks, and by MONAI Label.

Every test works on a copy of ``bundle/`` (``cp -rL``) in a temporary folder, never on the repository's bundle.
When ``models/model.pt`` has not been trained yet, the copy gets a seeded random ``state_dict`` of ``network_def``
(perturbed so the zero-initialised adaLN-Zero and output layers are non-zero and the output depends on the input).

MONAI Label is not a dependency (its 0.8.5 release requires numpy<2); the MONAI Label tests reproduce, with MONAI's
``ConfigParser``, what ``monailabel/tasks/infer/bundle.py`` and ``monailabel/tasks/train/bundle.py`` do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigItem, ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import MetaTensor, partition_dataset
from monai.handlers import CheckpointLoader
from monai.transforms import LoadImaged, MapTransform, Resize, SaveImaged
from monai.utils import optional_import

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"  # a copy of the schema named in metadata.json
MAX_FILE_BYTES = 25 * 1024 * 1024  # Model Zoo: every file in a bundle under 25 MB, larger ones via large_files.yml
TS_ATOL = 1e-5  # TorchScript vs eager synthesis, same seed (float32 on CPU; observed bit-identical)
SPACING = 2.0  # the inference config's spacing, so Spacingd does not resample the test volumes


def copy_bundle(dest: Path) -> Path:
    """``cp -rL bundle dest`` without the run-time folders the bundle creates (data, outputs, eval)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        if Path(folder).resolve() == BUNDLE.resolve():
            skipped |= {"data", "outputs", "eval"} & set(names)
        return skipped

    shutil.copytree(BUNDLE, dest, symlinks=False, ignore=ignore)
    return dest


def bundle_parser(bundle: Path, config: str = "inference.json") -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    return parser


def ensure_weights(bundle: Path) -> None:
    """A seeded random state_dict of ``network_def`` in the copy, if the bundle ships no trained weights yet."""
    target = bundle / "models" / "model.pt"
    if target.is_file():
        return
    generator = torch.Generator().manual_seed(0)
    network = bundle_parser(bundle).get_parsed_content("network_def")
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)


def write_volume(path: Path, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth, non-constant 3-D volume at the inference spacing, saved as NIfTI."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    ball = np.exp(-4 * sum(g**2 for g in grid))
    data = (100 + 800 * ball + 20 * rng.standard_normal(shape)).astype(np.float32)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-10.0, 12.0, 3.0]
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return affine


def clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no PYTHONPATH that could reach the repository, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


class LoadImageTensord(MapTransform):
    """What MONAI Label puts in place of every ``LoadImaged`` (monailabel/transform/pre.py): arrays are wrapped as
    channel-last MetaTensors, file paths go to the bundle's own ``LoadImaged``."""

    def __init__(self, keys, load_image_d) -> None:
        super().__init__(keys)
        self.load_image_d = load_image_d

    def __call__(self, data):
        d = dict(data)
        use_default = True
        for key in self.keys:
            if not isinstance(d[key], str):
                meta = d.setdefault(f"{key}_meta_dict", {})
                meta["spatial_shape"] = d[key].shape[:-1]
                meta["original_channel_dim"] = -1
                meta["original_affine"] = None
                d[key] = MetaTensor(d[key], meta=meta)
                use_default = False
        return self.load_image_d(d) if use_default else d


class Restored(MapTransform):
    """MONAI Label's last post transform (monailabel/transform/post.py): back to the loaded spatial shape, channel
    dropped, affine set to the original one."""

    def __init__(self, keys, ref_image: str) -> None:
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data):
        d = dict(data)
        ref = d.get(self.ref_image)
        meta = ref.meta if isinstance(ref, MetaTensor) else d.get(f"{self.ref_image}_meta_dict", {})
        for key in self.keys:
            result = d[key]
            current = result.shape[1:]
            spatial = meta.get("spatial_shape", current)[-len(current) :]
            if np.any(np.not_equal(current, spatial)):
                result = Resize(spatial_size=spatial, mode="nearest")(result)
            d[key] = result if len(result.shape) <= 3 else result[0] if result.shape[0] == 1 else result
            d.setdefault(f"{key}_meta_dict", {})["affine"] = meta.get("original_affine")
        return d


class TestBundleLoading(unittest.TestCase):
    """One copied bundle (with weights), one small NIfTI volume, shared by the tests of this module."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = Path(cls._tmp.name)
        cls.bundle = copy_bundle(cls.root / "elsewhere" / "phmdiff")
        ensure_weights(cls.bundle)
        cls.data_dir = cls.root / "data"
        cls.data_dir.mkdir()
        cls.shape = (20, 24, 5)
        cls.affine = write_volume(cls.data_dir / "case0.nii.gz", cls.shape, seed=0)

    @classmethod
    def tearDownClass(cls) -> None:
        cls._tmp.cleanup()

    # ----------------------------------------------------------------------------------------------------------
    # the folder on its own
    # ----------------------------------------------------------------------------------------------------------

    def test_copy_is_complete(self):
        for name in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf"):
            self.assertTrue((self.bundle / name).is_file(), name)
        self.assertTrue((BUNDLE / "LICENSE").is_file(), "bundle/LICENSE")
        self.assertTrue((self.bundle / "LICENSE").is_file() and not (self.bundle / "LICENSE").is_symlink())
        self.assertTrue((self.bundle / "custom" / "__init__.py").is_file(), "the custom code must travel with it")
        self.assertTrue((self.bundle / "docs" / "README.md").is_file(), "docs/README.md (Model Zoo model card)")
        self.assertTrue((self.bundle / "models" / "model.pt").is_file())

    def test_files_small_and_json_indented_by_four(self):
        files = [p for p in BUNDLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        files = [p for p in files if p.relative_to(BUNDLE).parts[0] not in ("data", "outputs", "eval")]
        self.assertTrue(files)
        for path in files:
            with self.subTest(path=str(path.relative_to(BUNDLE))):
                self.assertLess(path.stat().st_size, MAX_FILE_BYTES)
                if path.suffix == ".json":
                    text = path.read_text()
                    json.loads(text)
                    self.assertEqual(json_indent_errors(text), [])
                    self.assertTrue(text.endswith("\n") and not text.endswith("\n\n"), "one final newline")

    def test_copied_bundle_runs_from_another_folder(self):
        """``python -m monai.bundle run`` on the copy, from an unrelated cwd, without the repository on the path."""
        cwd = self.root / "unrelated_cwd"
        cwd.mkdir(exist_ok=True)
        env = clean_env()
        probe = subprocess.run([sys.executable, "-c", "import custom"], cwd=cwd, env=env, capture_output=True)
        self.assertNotEqual(probe.returncode, 0, "the repository's custom package must not be importable here")
        out_dir = self.root / "inference_out"
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(self.bundle / "configs" / "inference.json"),
            "--bundle_root",
            str(self.bundle),
            "--dataset_dir",
            str(self.data_dir),
            "--output_dir",
            str(out_dir),
            "--num_inference_steps",
            "2",
        ]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        written = sorted(out_dir.rglob("*.nii.gz"))
        self.assertEqual([p.name for p in written], ["case0_synth.nii.gz"])
        image = nib.load(str(written[0]))
        self.assertEqual(image.shape, self.shape)
        np.testing.assert_allclose(image.affine, self.affine, atol=1e-4)
        self.assertTrue(np.isfinite(image.get_fdata()).all())

    # ----------------------------------------------------------------------------------------------------------
    # Model Zoo: ci/verify_bundle.py calls these with bundle_root set and the bundle folder first on sys.path
    # ----------------------------------------------------------------------------------------------------------

    def test_verify_metadata(self):
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        self.assertEqual(meta["schema"].rsplit("/", 1)[-1], SCHEMA.name)
        self.assertIn(meta["version"], meta["changelog"])
        verify_metadata(meta_file=str(self.bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))

    def test_verify_net_in_out(self):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(self.bundle / "configs" / "metadata.json"),
            config_file=str(self.bundle / "configs" / "inference.json"),
            bundle_root=str(self.bundle),
            device="cpu",
        )
        # verify_net_in_out checks channels and dtype only; the synthesiser also keeps the spatial shape
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())["network_data_format"]
        self.assertEqual(list(meta["inputs"]), ["image"])
        self.assertEqual(list(meta["outputs"]), ["pred"])
        network = bundle_parser(self.bundle).get_parsed_content("network_def").eval()
        source = torch.rand(1, meta["inputs"]["image"]["num_channels"], 37, 45) * 2 - 1
        self.assertEqual(network(source).shape, (1, meta["outputs"]["pred"]["num_channels"], 37, 45))

    def test_ckpt_export_torchscript_matches_eager(self):
        ts_file = self.root / "verify_model.ts"
        ckpt_export(
            net_id="network_def",
            filepath=str(ts_file),
            ckpt_file=str(self.bundle / "models" / "model.pt"),
            meta_file=str(self.bundle / "configs" / "metadata.json"),
            config_file=str(self.bundle / "configs" / "inference.json"),
            bundle_root=str(self.bundle),
        )
        extra = {"metadata.json": ""}
        scripted = torch.jit.load(str(ts_file), map_location="cpu", _extra_files=extra).eval()
        self.assertEqual(json.loads(extra["metadata.json"])["version"], self.bundle_version())
        network = bundle_parser(self.bundle).get_parsed_content("network_def")
        network.load_state_dict(torch.load(self.bundle / "models" / "model.pt", map_location="cpu"))
        network.eval()
        source = torch.rand(2, 1, 33, 40, generator=torch.Generator().manual_seed(3)) * 2 - 1
        expected = network(source)
        self.assertGreater(float((expected - network(-source)).abs().max()), 1e-3, "output must depend on input")
        torch.testing.assert_close(scripted(source), expected, rtol=0.0, atol=TS_ATOL)

    def test_large_files_lists_the_weights(self):
        entries = {e["path"]: e for e in read_large_files(BUNDLE / "large_files.yml")}
        self.assertIn("models/model.pt", entries)
        entry = entries["models/model.pt"]
        self.assertTrue(entry["url"].startswith("https://"))
        weights = BUNDLE / "models" / "model.pt"
        self.assertEqual(entry.get("hash_type"), "sha256")
        self.assertEqual(entry["hash_val"], hashlib.sha256(weights.read_bytes()).hexdigest())

    # ----------------------------------------------------------------------------------------------------------
    # MONAI Label: BundleInferTask and BundleTrainTask, step by step
    # ----------------------------------------------------------------------------------------------------------

    def test_monailabel_infer(self):
        path = str(self.bundle)
        sys.path.insert(0, path)  # BundleInferTask puts the bundle folder first on sys.path
        try:
            config = ConfigParser()
            config.read_config(os.path.join(path, "configs", "inference.json"))
            config.config.update({"bundle_root": path})
            network = config.get_parsed_content("network_def", instantiate=True)
            metadata = json.loads((self.bundle / "configs" / "metadata.json").read_text())
            key_image = next(iter(metadata["network_data_format"]["inputs"]))
            key_pred = next(iter(metadata["network_data_format"]["outputs"]))
            self.assertEqual((key_image, key_pred), ("image", "pred"))  # BasicInferTask's input/output keys

            checkpoint = torch.load(os.path.join(path, "models", "model.pt"), map_location="cpu")
            state = checkpoint.get("model", checkpoint)
            self.assertEqual(set(state), set(network.state_dict()))
            network.load_state_dict(state, strict=True)  # load_strict=True by default
            network.eval()

            config.config.update({"device": "cpu"})  # _update_device with the request's device
            config.ref_resolver.items["device"] = ConfigItem(config="cpu", id="device")
            pre = list(config.get_parsed_content("preprocessing", instantiate=True).transforms)
            self.assertTrue(any(isinstance(t, LoadImaged) for t in pre), "MONAI Label swaps LoadImaged instances")
            pre = [LoadImageTensord(keys=t.keys, load_image_d=t) if isinstance(t, LoadImaged) else t for t in pre]

            image = str(self.data_dir / "case0.nii.gz")
            data = {
                "image": image,
                "image_path": image,
                "device": "cpu",
                "model": "phmdiff",
            }  # as BasicInferTask.__call__
            for transform in pre:  # run_transforms(..., use_compose=False)
                data = transform(data)

            inferer = config.get_parsed_content("inferer", instantiate=True)
            inputs = data["image"][None].to("cpu")
            with torch.no_grad():
                data["pred"] = inferer(inputs, network)[0]

            post = list(config.get_parsed_content("postprocessing", instantiate=True).transforms)
            self.assertTrue(any(isinstance(t, SaveImaged) for t in post), "MONAI Label removes SaveImaged instances")
            post = [t for t in post if not isinstance(t, SaveImaged)] + [Restored(keys=key_pred, ref_image=key_image)]
            for transform in post:
                data = transform(data)
        finally:
            sys.path.remove(path)

        pred = data["pred"]
        self.assertEqual(tuple(pred.shape), self.shape)
        self.assertTrue(torch.isfinite(torch.as_tensor(pred)).all())
        np.testing.assert_allclose(np.asarray(data["pred_meta_dict"]["affine"]), self.affine, atol=1e-4)
        self.assertFalse((self.bundle / "outputs").exists(), "nothing may be written during MONAI Label inference")

    def test_monailabel_train_one_epoch(self):
        """BundleTrainTask.__call__ with run_single_gpu: monai.bundle.run(run_id="run", init_id=None, ...)."""
        bundle = copy_bundle(self.root / "train_bundle" / "phmdiff")
        shutil.copy(self.bundle / "models" / "model.pt", bundle / "models" / "model.pt")
        pairs = []
        for i in range(3):
            image, label = self.root / f"train_{i}_t1w.nii.gz", self.root / f"train_{i}_t2w.nii.gz"
            write_volume(image, (24, 24, 10), seed=10 + i)
            write_volume(label, (24, 24, 10), seed=20 + i)
            pairs.append({"image": str(image), "label": str(label)})
        train_ds, val_ds = partition_dataset(pairs, ratios=[0.8, 0.2], shuffle=False)  # val_split 0.2

        config = ConfigParser()
        config.read_config(str(bundle / "configs" / "train.json"))
        train_handlers = config.get("train#handlers", [])
        model_pytorch = str(bundle / "models" / "model.pt")
        if not [t for t in train_handlers if t.get("_target_") == CheckpointLoader.__name__]:
            load = {"model": "$@network"}
            loader = {"_target_": "CheckpointLoader", "load_path": model_pytorch, "load_dict": load, "strict": False}
            train_handlers.insert(0, loader)
        overrides = {
            "bundle_root": str(bundle),
            "train#trainer#max_epochs": 1,
            "train#dataset#data": train_ds,
            "device": "cpu",
            "train#handlers": train_handlers,
            "validate#dataset#data": val_ds,
        }
        script = self.root / "monailabel_train.py"
        script.write_text(
            "import json, sys\nimport monai.bundle\n"
            f"sys.path.insert(0, {str(bundle)!r})\n"
            f"overrides = json.loads({json.dumps(json.dumps(overrides))})\n"
            "monai.bundle.run(run_id='run', init_id=None, final_id=None,\n"
            f"    meta_file={str(bundle / 'configs' / 'metadata.json')!r},\n"
            f"    config_file={str(bundle / 'configs' / 'train.json')!r}, **overrides)\n"
        )
        cwd = self.root / "unrelated_cwd"
        cwd.mkdir(exist_ok=True)
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=400
        )
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        checkpoints = bundle / "outputs" / "train" / "checkpoints"
        best = checkpoints / "model.pt"
        self.assertTrue(best.is_file(), sorted(p.name for p in checkpoints.glob("*")))
        state = torch.load(best, map_location="cpu")
        network = bundle_parser(bundle).get_parsed_content("network_def")
        self.assertEqual(set(state.get("model", state)), set(network.state_dict()))

    def bundle_version(self) -> str:
        return json.loads((self.bundle / "configs" / "metadata.json").read_text())["version"]


def read_large_files(path: Path) -> list[dict]:
    """The ``large_files`` list, read like Model Zoo's download_large_files (ConfigParser, which needs PyYAML), or,
    without PyYAML, by a reader of the flat ``- key: "value"`` form that the file uses."""
    if optional_import("yaml")[1]:
        parser = ConfigParser()
        parser.read_config(str(path))
        return list(parser.get()["large_files"])
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "large_files:", lines[0]
    entries: list[dict] = []
    for line in lines[1:]:
        item = line.strip()
        if item.startswith("- "):
            entries.append({})
            item = item[2:]
        key, value = item.split(":", 1)
        entries[-1][key.strip()] = value.strip().strip('"')
    return entries


def json_indent_errors(text: str) -> list[str]:
    """Lines whose indentation is not 4 spaces per open bracket (short arrays may stay on one line)."""
    errors, depth, in_string, escaped = [], 0, False, False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip(" ")
        if "\t" in line[: len(line) - len(stripped)]:
            errors.append(f"line {number}: tab")
        closing = stripped[:1] in ("}", "]")
        expected = 4 * (depth - 1 if closing else depth)
        if stripped and len(line) - len(stripped) != expected:
            errors.append(f"line {number}: indent {len(line) - len(stripped)}, expected {expected}")
        for char in stripped:
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
    return errors


if __name__ == "__main__":
    unittest.main()


def test_training_and_inference_define_one_network():
    """``network_def`` is written in ``train.json`` (the trainer and ``evaluate.json`` use it) and in
    ``inference.json`` (MONAI Label, ``ckpt_export`` and ``verify_net_in_out`` read it there, with no train.json):
    MONAI's ``%file#id`` macro resolves a file against the working directory, not the config, so a cross-file
    reference would break when the bundle runs from elsewhere. The two must stay one definition."""
    train, inference = (bundle_parser(BUNDLE, name) for name in ("train.json", "inference.json"))
    assert train["network_def"] == inference["network_def"]
    for id_ in ("num_inference_steps", "seed"):  # the ids network_def refers to
        assert train[id_] == inference[id_], id_


def test_num_inference_steps_override_reaches_the_network_in_every_config():
    """Every config combination the docs give builds its network as is (no override needed) and takes the id."""
    for files in (
        ["train.json"],
        ["train.json", "evaluate.json"],
        ["train.json", "train_3d.json"],
        ["inference.json"],
        ["inference.json", "inference_dicom.json"],
        ["inference.json", "inference_3d.json"],
    ):
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / name) for name in files])
        parser["bundle_root"] = str(BUNDLE)
        parser["num_inference_steps"] = 5
        assert parser.get_parsed_content("network_def").num_inference_steps == 5, files
