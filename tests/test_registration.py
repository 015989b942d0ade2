"""Registration: our names are registered once, the duplicate check stays on for them, and only
the stock Allen problems on the explicit list are replaced."""
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def registry():
    from allen_sr.t2t.names import register_all

    register_all()
    from tensor2tensor.utils import registry as t2t_registry

    return t2t_registry


def test_a_second_registration_of_our_name_fails_loudly(registry):
    from allen_sr.t2t import registration

    def img2img_allen_cpu_tiny():  # the name of one of our registered hparams sets
        raise AssertionError("never called")

    with pytest.raises(KeyError, match="img2img_allen_cpu_tiny already registered"):
        registration.hparams(img2img_allen_cpu_tiny)


def test_only_the_listed_stock_problems_are_replaced_by_ours(registry):
    from allen_sr.t2t import registration

    allen = {name: registry.problem(name).__class__.__module__
             for name in registry.list_problems() if name.startswith("img2img_allen_brain")}
    ours = {name for name, module in allen.items() if module == "allen_sr.problems.allen_brain"}
    assert ours == set(registration.REPLACED_STOCK_PROBLEMS)
    # The stock base problem, which we do not replace, is still tensor2tensor's.
    assert allen["img2img_allen_brain"] == "tensor2tensor.data_generators.allen_brain"


def test_usr_dir_and_package_import_register_each_class_once():
    """`--t2t_usr_dir=problems` imports the folder as `problems`; the registering modules are
    still imported once, under their allen_sr names (a second import would raise on our names)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import problems, allen_sr.problems\n"
        "from tensor2tensor.utils import registry\n"
        "print(registry.problem('img2img_local_dim8to32').__class__.__module__)\n"
        "print(sorted(m for m in sys.modules if m.endswith(('allen_brain', 'local_images'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, REPO], capture_output=True, text=True,
                         check=True, cwd="/").stdout.splitlines()
    assert out[0] == "allen_sr.problems.local_images"
    assert out[1] == str(sorted(["allen_sr.problems.allen_brain", "allen_sr.problems.local_images",
                                 "tensor2tensor.data_generators.allen_brain"]))
