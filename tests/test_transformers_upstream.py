"""transformers' own Llava model test suite, run on this package's classes and on the built-in ones side by side.

Why: `LlavaForConditionalGenerationModelTest` (tests/models/llava/test_modeling_llava.py in transformers) with its
mixins (`ModelTesterMixin`, `GenerationTesterMixin`, ...) is the contract a model must meet to behave like a
built-in one: save/load, weight init, attention backends, caches, generation, gradient checkpointing, resizing
embeddings... This module runs that suite twice:

* `BuiltinLlavaUpstreamTest` is upstream's class unchanged, on `LlavaModel` / `LlavaForConditionalGeneration`;
* `PluginLlavaUpstreamTest` is the same class with `LlavaPluginModel` / `LlavaPluginForConditionalGeneration` and a
  model tester that builds the equivalent `LlavaPluginConfig`; every test body is upstream's.

"Passes where the built-in passes" means: every test method that PASSES in `BuiltinLlavaUpstreamTest` also passes
in `PluginLlavaUpstreamTest` (same method name). Tests that fail, skip or xfail for the built-in classes too say
nothing about the plugin and are not expected to pass. Pipeline tests are switched off for the plugin (there are
no tiny Hub checkpoints of it); they skip for built-in llava as well.

Why it is skipped in CI: the suite is not installable. transformers' PyPI sdist ships only part of its `tests/`
tree (no tests/models, no tests/generation), so the module needs a git checkout of transformers and skips the whole
module unless `TRANSFORMERS_REPO` names one. Use the tag of the installed release: upstream's tests move with
transformers' internals, and `test_pipeline_mixin` executes the checkout's `src/transformers/__init__.py`.

How to run (from the project root; the venv also needs `parameterized` and `httpx`, which upstream's tests import):

    git clone --depth 1 --branch v<installed version> https://github.com/huggingface/transformers /path/to/tf
    TRANSFORMERS_REPO=/path/to/tf .venv/bin/python -m pytest tests/test_transformers_upstream.py -rA

then compare `PluginLlavaUpstreamTest::<name>` with `BuiltinLlavaUpstreamTest::<name>` in the -rA summary.

How: upstream's `tests` package is imported under another top-level name (`transformers_tests`), because this
project's own `tests` package already owns the name `tests`; upstream's relative imports resolve inside it, and its
single absolute `from tests.exporters...` import is pointed at the same module while upstream loads. Only what
upstream's root conftest.py sets that its model tests depend on is reproduced here, for this module's duration.
"""

import importlib
import importlib.util
import operator
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import transformers
import transformers.models.auto.modeling_auto as modeling_auto
from transformers.testing_utils import require_torch
from transformers.utils import enable_tf32

from modeling_llava import LlavaPluginConfig, LlavaPluginForConditionalGeneration, LlavaPluginModel

REPO_VARIABLE = "TRANSFORMERS_REPO"
# Upstream's `tests` package, under a name that cannot clash with this project's `tests` package.
UPSTREAM_PACKAGE = "transformers_tests"
# What this module reads from a checkout (paths relative to its root).
CHECKOUT_LAYOUT = (
    "tests/__init__.py",
    "tests/models/llava/test_modeling_llava.py",
    "tests/test_modeling_common.py",
    "tests/generation/test_utils.py",
    "src/transformers/__init__.py",
    "utils",
)
# Upstream modules imported as `tests.<name>` (absolute) rather than relatively, by upstream test code
# (tests/generation/test_utils.py: `from tests.exporters.test_export import ExportGenerateTesterMixin`).
ABSOLUTE_UPSTREAM_IMPORTS = ("exporters.test_export",)

if not os.environ.get(REPO_VARIABLE):
    pytest.skip(
        f"{REPO_VARIABLE} is not set: set it to the root of a transformers git checkout at the installed version "
        f"(git clone --branch v{transformers.__version__} https://github.com/huggingface/transformers) to run "
        "transformers' own Llava model tests on the plugin; PyPI's transformers sdist lacks tests/models and "
        "tests/generation",
        allow_module_level=True,
    )


def checkout_root() -> Path:
    """The checkout `TRANSFORMERS_REPO` names; a wrong path is an error, not a skip (someone asked for the run)."""
    root = Path(os.environ[REPO_VARIABLE]).expanduser().absolute()
    missing = [path for path in CHECKOUT_LAYOUT if not (root / path).exists()]
    if missing:
        raise FileNotFoundError(
            f"{REPO_VARIABLE}={root} is not the root of a transformers checkout: missing {', '.join(missing)}"
        )
    version = re.search(r'^__version__ = "([^"]+)"', (root / "src/transformers/__init__.py").read_text(), re.M)
    if version is not None and version.group(1) != transformers.__version__:
        warnings.warn(
            f"{REPO_VARIABLE} holds transformers {version.group(1)}, {transformers.__version__} is installed: "
            "upstream's tests may not match the installed library (check out the installed version's tag)",
            stacklevel=1,
        )
    return root


def import_upstream_tests(root: Path) -> ModuleType:
    """Import `<root>/tests/models/llava/test_modeling_llava.py` as `transformers_tests.models.llava...`.

    Leaves behind only the `transformers_tests.*` modules. Undone afterwards: the `tests.*` aliases for upstream's
    absolute imports; the `<root>/utils` entries upstream's modules append to `sys.path` (they import from there at
    import time only); and `sys.modules["transformers"]`, which `test_pipeline_mixin`'s
    `direct_transformers_import(<root>/src/transformers)` replaces with a lazy module whose submodules would come
    from the checkout rather than from the installed library.
    """
    package_dir = root / "tests"
    if UPSTREAM_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            UPSTREAM_PACKAGE, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[UPSTREAM_PACKAGE] = package  # before executing it, so relative imports find their parent
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[UPSTREAM_PACKAGE]
            raise

    installed_transformers = sys.modules["transformers"]
    saved_path = list(sys.path)
    aliases = {f"tests.{name}": f"{UPSTREAM_PACKAGE}.{name}" for name in ABSOLUTE_UPSTREAM_IMPORTS}
    replaced = {alias: sys.modules.get(alias) for alias in aliases}
    try:
        with warnings.catch_warnings():
            # upstream's marks (`generate`, `is_training_test`, ...) are registered by its conftest, not here
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            for alias, name in aliases.items():
                sys.modules[alias] = importlib.import_module(name)
            return importlib.import_module(f"{UPSTREAM_PACKAGE}.models.llava.test_modeling_llava")
    finally:
        for alias, previous in replaced.items():
            if previous is None:
                sys.modules.pop(alias, None)
            else:
                sys.modules[alias] = previous
        sys.modules["transformers"] = installed_transformers
        sys.path[:] = [entry for entry in sys.path if entry in saved_path or not entry.startswith(str(root))]


CHECKOUT = checkout_root()
# Imported by upstream's test modules, but not dependencies of this project.
pytest.importorskip("parameterized", reason=f"{REPO_VARIABLE} is set, but upstream's tests need `parameterized`")
pytest.importorskip("httpx", reason=f"{REPO_VARIABLE} is set, but upstream's tests need `httpx`")
upstream = import_upstream_tests(CHECKOUT)
ConfigTester = importlib.import_module(f"{UPSTREAM_PACKAGE}.test_configuration_common").ConfigTester

# The built-in class, unchanged: the reference each plugin outcome is compared with.
BuiltinLlavaUpstreamTest = upstream.LlavaForConditionalGenerationModelTest


# torch's fp32 precision switches, as `torch.backends` attribute paths ("" is `torch.backends` itself, whose
# setting cascades to the others, so it is restored first).
FP32_PRECISION_SCOPES = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)


def precision_flags() -> dict[tuple[Any, str], Any]:
    """Current TF32/fp32-precision switches that upstream's conftest changes, keyed by (owner, attribute)."""
    flags: dict[tuple[Any, str], Any] = {(torch.backends.cudnn, "allow_tf32"): torch.backends.cudnn.allow_tf32}
    for scope in FP32_PRECISION_SCOPES:
        owner = operator.attrgetter(scope)(torch.backends) if scope else torch.backends
        if hasattr(owner, "fp32_precision"):
            flags[(owner, "fp32_precision")] = owner.fp32_precision
    return flags


@pytest.fixture(scope="module", autouse=True)
def upstream_conftest_settings() -> Iterator[None]:
    """What transformers' root conftest.py sets for every test session and its model tests rely on.

    `DISABLE_SAFETENSORS_CONVERSION`: `from_pretrained` of a `.bin` checkpoint must not start a background
    safetensors conversion on the Hub. TF32 off and cuDNN convolutions in IEEE fp32: upstream's equivalence
    tolerances (e.g. `test_batching_equivalence`, 1e-5) assume full fp32 on GPUs. Upstream sets both for the whole
    session; here they hold for this module's tests and are put back afterwards. The rest of upstream's conftest
    (CI cache fallbacks, doctest plumbing, markers, report options) does not affect these tests. Its global
    "ignore FutureWarning" filter is left out on purpose: `test_bc_cache_name_forward` records the FutureWarning a
    deprecated argument name raises, and fails (for built-in llava too) when that warning is filtered out.
    """
    saved = precision_flags()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("DISABLE_SAFETENSORS_CONVERSION", "true")
        torch.backends.cudnn.allow_tf32 = False
        enable_tf32(False)
        if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            for (owner, attribute), value in saved.items():
                setattr(owner, attribute, value)


class LlavaPluginModelTester(upstream.LlavaVisionText2TextModelTester):
    """Upstream's model tester (same sizes, inputs and sub-configs); only the config class changes."""

    def get_config(self) -> LlavaPluginConfig:
        """The `LlavaPluginConfig` equivalent of the `LlavaConfig` upstream's tester builds."""
        return LlavaPluginConfig(
            text_config=self.text_config,
            vision_config=self.vision_config,
            ignore_index=self.ignore_index,
            image_token_id=self.image_token_index,
            projector_type="mlp2x_gelu",  # upstream's projector: linear_1 -> act -> linear_2
            projector_hidden_act=self.projector_hidden_act,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
            vision_feature_layer=self.vision_feature_layer,
            # upstream passes (image_size // patch_size) ** 2 image tokens per image; the plugin's value must agree
            image_seq_length=self.num_image_tokens,
        )


@require_torch
class PluginLlavaUpstreamTest(upstream.LlavaForConditionalGenerationModelTest):
    """transformers' `LlavaForConditionalGenerationModelTest`, run on `LlavaPluginModel` and its LM-head model."""

    all_model_classes = (LlavaPluginModel, LlavaPluginForConditionalGeneration)
    # No tiny checkpoints of the plugin exist on the Hub; built-in llava's pipeline tests skip too (none in
    # upstream's tiny-model summary).
    pipeline_model_mapping: dict[str, type] = {}
    # Upstream runs `test_can_init_all_missing_weights` only for models whose configuration file carries a
    # "# Copyright <year>" header from 2023 on (llava's does); the plugin's has none, which would read as "old model,
    # skip". Opt in so the test runs as it does for built-in llava.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls) -> None:
        """List the plugin in transformers' static model-type -> class-name tables wherever built-in llava is.

        Upstream tests decide what to run from those tables (`MODEL_MAPPING_NAMES`: a base model gets no labels
        and `test_training` skips it; `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`: labels for the LM head; ...).
        `AutoModel.register` does not touch them, so without this the plugin would be tested as a different kind of
        model. The entries are removed again when the class is done.
        """
        super().setUpClass()
        model_type = LlavaPluginConfig.model_type
        for attribute in dir(modeling_auto):
            table = getattr(modeling_auto, attribute)
            if not attribute.endswith("_MAPPING_NAMES") or attribute == "CONFIG_MAPPING_NAMES":
                continue
            if isinstance(table, dict) and isinstance(table.get("llava"), str) and model_type not in table:
                table[model_type] = table["llava"].replace("Llava", "LlavaPlugin", 1)
                cls.addClassCleanup(table.pop, model_type, None)

    def setUp(self) -> None:
        """Upstream's `setUp`, with the plugin's model tester and config class."""
        self.model_tester = LlavaPluginModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=LlavaPluginConfig,
            has_text_modality=False,
            common_properties=["image_token_index", "vision_feature_layer", "image_seq_length"],
        )
