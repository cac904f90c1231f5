#!/usr/bin/env bash
# Build the py4DSTEM test environment and run the py4DSTEM bridge tests.
#
#   bash .ci/py4dstem_env.sh [VENV_DIR]      (default: .venv-py4dstem)
#
# py4DSTEM 0.14.x pins numpy<2 and scikit-learn<1.5, so it cannot live in the
# main (numpy 2) environment: this script makes a separate virtualenv, installs
# the project with its "py4dstem" extra plus pytest, checks that py4DSTEM,
# HyperSpy and hyperspy_cnmf import together, and runs
# `pytest tests/test_py4dstem.py -m py4dstem`. Any failure - including py4DSTEM
# not importing - exits non-zero; the tests are told (HYPERSPY_CNMF_REQUIRE_PY4DSTEM=1)
# to fail rather than skip when py4DSTEM is missing.
#
# Reproducibility: packages come from the package index only (pip config files
# and local find-links/extra indexes of the machine are ignored; PIP_INDEX_URL,
# if set, is honoured), with the versions pinned in the constraints below.
# Environment: PYTHON (interpreter to build the venv with, default python3).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="${1:-.venv-py4dstem}"
python="${PYTHON:-python3}"

# Index only: no machine-local wheel folders or extra file:// indexes.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX || true
export PIP_DISABLE_PIP_VERSION_CHECK=1

constraints="$(mktemp "${TMPDIR:-/tmp}/py4dstem-constraints.XXXXXX")"
trap 'rm -f "$constraints"' EXIT
# Full lock of the environment this was validated with (Python 3.11). The pins
# that matter: py4DSTEM 0.14.18 requires numpy<2 and scikit-learn<1.5, and
# HyperSpy 2.5 / RosettaSciIO 0.15 accept numpy>=1.25, so the newest working
# combination is numpy 1.26.4 + scikit-learn 1.4.2 (pip finds it by itself; the
# lock only makes it reproducible). Refresh with `pip freeze` after a change.
cat >"$constraints" <<'EOF'
beautifulsoup4==4.15.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
cloudpickle==3.1.2
colorspacious==1.1.2
contourpy==1.3.3
cycler==0.12.1
dask==2026.8.0
dill==0.4.1
distributed==2026.8.0
emdfile==0.0.16
filelock==4.2.12
flexcache==0.3
flexparser==0.4
fonttools==4.68.0
fsspec==2026.9.0
gdown==6.5.1
h5py==3.16.0
hdf5plugin==7.1.0
hyperspy==2.5.0
idna==3.20
ImageIO==2.38.1
importlib_metadata==10.2.0
iniconfig==2.3.1
Jinja2==3.1.6
joblib==1.6.0
kiwisolver==1.5.1
lazy-importer==0.1.0
lazy-loader==0.6
llvmlite==0.50.0
locket==1.0.0
MarkupSafe==3.0.4
matplotlib==3.11.2
mpire==2.10.2
mpmath==1.3.0
msgpack==1.2.4
natsort==8.4.0
ncempy==1.11.1
networkx==3.6.1
numba==0.68.1
numpy==1.26.4
packaging==26.3
partd==1.4.2
pillow==13.0.0
Pint==0.25.3
platformdirs==4.14.7
pluggy==1.7.0
prettytable==3.18.0
psutil==7.2.2
py4DSTEM==0.14.18
pyaml==26.7.0
Pygments==2.21.0
pylops==2.8.0
pyparsing==3.3.3
PySocks==1.7.1
pytest==9.2.0
python-box==7.4.1
python-dateutil==4.0.0
PyYAML==6.0.3
requests==2.34.2
rosettasciio==0.15.0
scikit-image==0.26.0
scikit-learn==1.4.2
scikit-optimize==0.10.2
scipy==1.17.1
sortedcontainers==2.4.0
soupsieve==4.1.2
sympy==1.14.0
tblib==3.2.2
threadpoolctl==3.8.0
tifffile==2026.3.3
toolz==1.2.0
tornado==6.6.1
tqdm==4.70.1
traits==7.3.0
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
wcwidth==0.9.4
zict==3.0.0
zipp==4.1.2
EOF

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet -c "$constraints" ".[py4dstem]" pytest
installed=$(date +%s)

# Fail loudly if the environment is not usable (never skip).
"$py" - <<'EOF'
import numpy
import py4DSTEM
import hyperspy
import hyperspy.api  # noqa: F401
import hyperspy_cnmf.io  # noqa: F401

print(
    f"py4DSTEM {py4DSTEM.__version__}, HyperSpy {hyperspy.__version__}, "
    f"numpy {numpy.__version__}"
)
EOF

HYPERSPY_CNMF_REQUIRE_PY4DSTEM=1 "$py" -m pytest tests/test_py4dstem.py \
    -m py4dstem -p no:cacheprovider -q
end=$(date +%s)
echo "py4DSTEM env: install $((installed - start)) s, tests $((end - installed)) s," \
    "total $((end - start)) s"
