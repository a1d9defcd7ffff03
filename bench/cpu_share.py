"""`make bench-cpu`: does the model starve the robot? A 100 Hz control loop beside SmolLM2.

bench/control_loop.py (a process of its own at nice 0, as a robot's controller runs) records
how late each period starts, first on an idle machine, then while the real SmolLM2-135M
generates continuously through the node with each CPU share in turn:
  every core:  num_thread = all cores, nice 0, every core (what Ollama does by itself);
  old default: num_thread 4 (the default before it became automatic), nice 10, every core;
  defaults:    the node's defaults as they are (num_thread 0: automatic, nice 10, every core);
  scaled:      the defaults' share of a 6-core S100 on this machine (num_thread = 2/3 of the
               cores, at least 1; nice 10);
  pinned:      scaled, with the model on every core but 0 and the control loop on core 0.
One run, the same model and prompt; writes bench/results/cpu_share.json, cpu_share.md and
cpu_share.png. BENCH_QUICK=1: 2 s per case, answers of 16 tokens (bench/sizes.py).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from s100_llm_msgs.action import Chat

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 's100_llm' / 'test'))

from harness import free_port  # noqa: E402,I100
from harness import NodeProcess  # noqa: E402
from harness import RosClient  # noqa: E402
from sizes import results_dir  # noqa: E402
from sizes import sized  # noqa: E402
from support import localhost_discovery  # noqa: E402

localhost_discovery(os.environ)
SECONDS = float(os.environ.get('BENCH_CPU_SECONDS', sized('20', '2')))
ANSWER_TOKENS = sized(256, 16)
DOMAIN = int(os.environ.get('BENCH_DOMAIN', '79'))
CORES = os.cpu_count() or 1
SCALED_THREADS = max(1, CORES * 2 // 3)
SCENARIOS: Dict[str, Dict[str, Any]] = {
    'every core': {'num_thread': CORES, 'nice': 0},
    'old default': {'num_thread': 4, 'nice': 10},
    'defaults': {},
    'scaled': {'num_thread': SCALED_THREADS, 'nice': 10},
    'pinned': {'num_thread': max(1, min(SCALED_THREADS, CORES - 1)), 'nice': 10,
               'cpu_cores': f'1-{CORES - 1}'},
}
PROMPT = 'Tell a long story about a robot that learns to cook.'


def control_loop(cores: Optional[set] = None) -> Dict[str, Any]:
    """Run the control loop for SECONDS (on `cores` when given); its figures and samples."""
    done = subprocess.run(
        [sys.executable, str(HERE / 'control_loop.py'), '--rate', '100', '--seconds',
         str(SECONDS), '--work-ms', '1.0', '--samples'],
        capture_output=True, text=True, check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    return json.loads(done.stdout)


class Generation:
    """Chats one after another through the node until stopped; counts their tokens."""

    def __init__(self, client: RosClient) -> None:
        self.client = client
        self.tokens = 0
        self.seconds = 0.0
        self.failures: List[str] = []
        self.started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            run = self.client.send_chat(Chat.Goal(prompt=PROMPT, max_tokens=ANSWER_TOKENS,
                                                  temperature=0.8))
            assert run.wait_accepted(), 'chat goal rejected'
            self.started.set()
            result = run.wait_result(600)
            if result.error_message:
                self.failures.append(result.error_message)
            self.tokens += result.stats.completion_tokens
            self.seconds += time.monotonic() - sent

    def stop(self) -> float:
        """Wait for the chat in progress; tokens/s over every chat."""
        self._stop.set()
        self._thread.join(600)
        return self.tokens / self.seconds if self.seconds else 0.0


def scenario(workdir: pathlib.Path, name: str, parameters: Dict[str, Any]) -> Dict[str, Any]:
    port = free_port()
    values = {'model': 'smollm2:135m', 'ollama_bin': 's100-ollama-emulator',
              'host': f'127.0.0.1:{port}', 'models_dir': str(workdir / 'models'),
              'max_tokens_limit': 100000, **parameters}
    node = NodeProcess(DOMAIN, workdir / f"{name.replace(' ', '_')}.log", values)
    client = RosClient(DOMAIN)
    try:
        client.wait_for_node()
        assert client.change_state('configure') and client.change_state('activate'), \
            node.output()
        generation = Generation(client)
        assert generation.started.wait(120), 'no chat started'
        loop = control_loop({0} if name == 'pinned' and CORES > 1 else None)
        tokens_per_second = generation.stop()
        assert not generation.failures, generation.failures
        return {**loop, 'tokens_per_s': tokens_per_second, 'parameters': parameters}
    finally:
        client.close()
        node.stop()


def table(results: Dict[str, Dict[str, Any]]) -> str:
    lines = ['| case | num_thread, nice, cores | lateness p50 (ms) | p99 (ms) | max (ms) | '
             'missed periods | tokens/s |', '| --- | --- | --- | --- | --- | --- | --- |']
    for name, figures in results.items():
        parameters = figures.get('parameters')
        share = ('-' if parameters is None else
                 f"{parameters.get('num_thread', 'automatic')}, {parameters.get('nice', 10)}, "
                 f"{parameters.get('cpu_cores') or 'all'}")
        tokens = f"{figures['tokens_per_s']:.1f}" if 'tokens_per_s' in figures else '-'
        lines.append(f"| {name} | {share} | {figures['p50_ms']:.3f} | {figures['p99_ms']:.3f} "
                     f"| {figures['max_ms']:.2f} | {figures['missed']} of {figures['periods']} "
                     f'| {tokens} |')
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for name, figures in results.items():
        values = sorted(figures['lateness_ms'])
        left.step(values, [(i + 1) / len(values) for i in range(len(values))], where='post',
                  label=f"{name} (p99 {figures['p99_ms']:.2f} ms)")
    left.set_xscale('symlog', linthresh=0.1)
    left.set_xlabel('lateness of a 100 Hz period start (ms)')
    left.set_ylabel('fraction of periods')
    left.set_ylim(0.9, 1.001)
    left.legend(fontsize=8)
    generating = {n: f for n, f in results.items() if 'tokens_per_s' in f}
    right.bar(list(generating), [f['tokens_per_s'] for f in generating.values()])
    right.set_ylabel('SmolLM2-135M tokens/s through the node')
    figure.suptitle(f'control loop beside the model, {CORES} cores')
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> int:
    out = results_dir()
    results: Dict[str, Dict[str, Any]] = {}
    print(f'idle ({SECONDS:g} s)...', flush=True)
    results['idle'] = control_loop()
    with tempfile.TemporaryDirectory() as directory:
        for name, parameters in SCENARIOS.items():
            print(f'{name} ({SECONDS:g} s)...', flush=True)
            results[name] = scenario(pathlib.Path(directory), name, parameters)
    (out / 'cpu_share.json').write_text(json.dumps(results))
    (out / 'cpu_share.md').write_text(table(results))
    plot(results, out / 'cpu_share.png')
    print(table(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
