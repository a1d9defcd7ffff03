"""`make bench`: what the node adds over calling Ollama directly, measured side by side.

Every figure is taken in the same run against the same emulator server (the node's managed
one, reached directly with the official `ollama` client for the baseline), repeated, and
reported with its spread. Writes bench/results/results.json and bench/results/summary.md.
These machines are noisy: ratios say more than absolute times.
"""

import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import httpx
import ollama
import psutil

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 's100_llm' / 'test'))

from harness import NodeProcess, RosClient, free_port, wait_for  # noqa: E402,I100,I101
from s100_llm.action import Chat  # noqa: E402

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
REPEATS = int(os.environ.get('BENCH_REPEATS', '20'))


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def spread(values: List[float]) -> Dict[str, float]:
    return {'median': statistics.median(values), 'p95': percentile(values, 0.95),
            'min': min(values), 'max': max(values), 'n': len(values)}


class Bench:
    def __init__(self, workdir: pathlib.Path, model: str, env: Dict[str, str],
                 parameters: Optional[Dict[str, float]] = None) -> None:
        self.port = free_port()
        self.domain = 77
        values = {'model': model, 'ollama_bin': 's100-ollama-emulator',
                  'host': f'127.0.0.1:{self.port}', 'models_dir': str(workdir / 'models'),
                  'diagnostics_period': 1.0, 'max_tokens_limit': 100000}
        values.update(parameters or {})
        self.node = NodeProcess(self.domain, workdir / f'{model.replace(":", "_")}.log',
                                values, env)
        self.client = RosClient(self.domain)
        self.client.wait_for_node()
        self.url = f'http://127.0.0.1:{self.port}'
        self.direct = ollama.Client(host=self.url)
        self.model = model

    def close(self) -> None:
        self.client.close()
        self.node.stop()

    def transition(self, name: str) -> float:
        started = time.monotonic()
        assert self.client.change_state(name), self.node.output()
        return time.monotonic() - started

    # ---- chats -----------------------------------------------------------------------------
    def node_chat(self, prompt: str, **fields) -> Dict[str, float]:
        sent = time.monotonic()
        run = self.client.send_chat(Chat.Goal(prompt=prompt, **fields))
        assert run.wait_accepted()
        result = run.wait_result(600)
        done = time.monotonic()
        try:
            wait_for(lambda: len(run.feedback) >= result.feedback_count, 'feedback', 5)
        except AssertionError:
            pass   # counted as lost below
        return {'ttft': (run.first_feedback_at or done) - sent, 'total': done - sent,
                'tokens': result.stats.completion_tokens, 'feedback': len(run.feedback),
                'feedback_sent': result.feedback_count}

    def direct_chat(self, prompt: str, options=None) -> Dict[str, float]:
        sent = time.monotonic()
        first = None
        tokens = 0
        for part in self.direct.chat(self.model, [{'role': 'user', 'content': prompt}],
                                     stream=True, options=options, keep_alive=-1):
            if first is None:
                first = time.monotonic()
            if part.done:
                tokens = part.eval_count
        return {'ttft': first - sent, 'total': time.monotonic() - sent, 'tokens': tokens}


def scripted_figures(workdir: pathlib.Path) -> Dict:
    figures: Dict = {}
    # Transitions against the emulator's own start, load and unload, in the same run.
    emulator_start, emulator_load, emulator_unload = [], [], []
    node_times: Dict[str, List[float]] = {t: [] for t in
                                          ('configure', 'activate', 'deactivate', 'cleanup')}
    bench = Bench(workdir, 'echo:latest', {})
    try:
        assert bench.client.change_state('configure') and bench.client.change_state('activate')
        assert bench.client.change_state('deactivate') and bench.client.change_state('cleanup')
        for _ in range(max(3, REPEATS // 4)):
            for name in node_times:
                node_times[name].append(bench.transition(name))
            emulator_start.append(direct_server_start(workdir))
            load, unload = direct_load_unload(workdir)
            emulator_load.append(load)
            emulator_unload.append(unload)
        figures['transitions_s'] = {name: spread(v) for name, v in node_times.items()}
        figures['emulator_own_s'] = {'start': spread(emulator_start),
                                     'load': spread(emulator_load),
                                     'unload': spread(emulator_unload)}
        own = {'configure': emulator_start, 'activate': emulator_load,
               'deactivate': emulator_unload, 'cleanup': [0.0]}
        figures['transition_overhead_ms'] = {
            name: (statistics.median(node_times[name]) - statistics.median(own[name])) * 1000
            for name in node_times}

        assert bench.client.change_state('configure') and bench.client.change_state('activate')
        # Time to first token, node vs direct, interleaved.
        node_ttft, direct_ttft = [], []
        for index in range(REPEATS):
            node_ttft.append(bench.node_chat(f'hello {index}')['ttft'])
            direct_ttft.append(bench.direct_chat(f'hello {index}')['ttft'])
        added = [n - d for n, d in zip(node_ttft, direct_ttft)]
        figures['ttft_ms'] = {'node': spread([v * 1000 for v in node_ttft]),
                              'direct': spread([v * 1000 for v in direct_ttft]),
                              'added_median': statistics.median(added) * 1000,
                              'added_p95': percentile(added, 0.95) * 1000}
        # Idle cost with diagnostics at 1 Hz, active, no chat.
        process = psutil.Process(bench.node.pid)
        cpu_before, wall_before = sum(process.cpu_times()[:2]), time.monotonic()
        time.sleep(float(os.environ.get('BENCH_IDLE_SECONDS', '20')))
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        figures['idle'] = {'cpu_percent_of_a_core': 100 * cpu / (time.monotonic() - wall_before),
                           'rss_mb': process.memory_info().rss / 2 ** 20}
        statuses = bench.client.fresh_statuses()
        sampling = {kv.key: kv.value for kv in statuses['llm: System CPU'].values}
        figures['idle']['diagnostics_sampling_cpu_ms'] = float(
            sampling['diagnostics sampling CPU (ms)'])
    finally:
        bench.close()

    # Sustained streaming: one feedback per chunk with the model at 2,000 tokens/s, and
    # coalesced feedback (feedback_min_interval 5 ms) with the model at full speed.
    figures['streaming'] = streaming_figures(workdir, {'OLLAMA_EMULATOR_TOKEN_RATE': '2000'},
                                             {})
    figures['streaming_coalesced'] = streaming_figures(workdir, {},
                                                       {'feedback_min_interval': 0.005})
    bench = Bench(workdir, 'endless:latest', {'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    try:
        assert bench.client.change_state('configure') and bench.client.change_state('activate')
        delays = []
        for _ in range(REPEATS):
            seen = len(httpx.get(bench.url + '/emulator/stats').json()['disconnects'])
            run = bench.client.send_chat(Chat.Goal(prompt='go', max_tokens=100000))
            assert run.wait_accepted()
            wait_for(lambda: run.feedback, 'streaming')
            requested = time.monotonic()
            run.cancel()
            stats = wait_for(lambda: (lambda s: s if len(s['disconnects']) > seen else None)(
                httpx.get(bench.url + '/emulator/stats').json()), 'the disconnect')
            delays.append(stats['disconnects'][-1]['at'] - requested)
            run.wait_result()
        figures['cancel_to_disconnect_ms'] = spread([d * 1000 for d in delays])
    finally:
        bench.close()
    return figures


def streaming_figures(workdir: pathlib.Path, env: Dict[str, str],
                      parameters: Dict[str, float]) -> Dict:
    bench = Bench(workdir, 'endless:latest', env, parameters)
    try:
        assert bench.client.change_state('configure') and bench.client.change_state('activate')
        process = psutil.Process(bench.node.pid)
        node_rates, direct_rates, lost, cpu_per_token = [], [], [], []
        for _ in range(max(3, REPEATS // 4)):
            cpu_before = sum(process.cpu_times()[:2])
            run = bench.node_chat('go', max_tokens=5000)
            cpu_per_token.append((sum(process.cpu_times()[:2]) - cpu_before) / run['tokens'])
            node_rates.append(run['tokens'] / run['total'])
            lost.append(run['feedback_sent'] - run['feedback'])
            direct = bench.direct_chat('go', {'num_predict': 5000})
            direct_rates.append(direct['tokens'] / direct['total'])
        return {
            'node_tokens_per_s': spread(node_rates), 'direct_tokens_per_s': spread(direct_rates),
            'ratio': statistics.median(node_rates) / statistics.median(direct_rates),
            'lost_feedback': max(lost), 'feedback_messages_per_goal': run['feedback_sent'],
            'node_cpu_ms_per_token': spread([v * 1000 for v in cpu_per_token])}
    finally:
        bench.close()


def direct_server_start(workdir: pathlib.Path) -> float:
    import subprocess
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(['s100-ollama-emulator', 'serve'], env=dict(
        os.environ, OLLAMA_HOST=f'127.0.0.1:{port}', OLLAMA_MODELS=str(workdir / 'direct')),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _answers(f'http://127.0.0.1:{port}'), 'the emulator')
    elapsed = time.monotonic() - started
    process.terminate()
    process.wait()
    return elapsed


def direct_load_unload(workdir: pathlib.Path) -> tuple:
    import subprocess
    port = free_port()
    process = subprocess.Popen(['s100-ollama-emulator', 'serve'], env=dict(
        os.environ, OLLAMA_HOST=f'127.0.0.1:{port}', OLLAMA_MODELS=str(workdir / 'direct')),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f'http://127.0.0.1:{port}'), 'the emulator')
        client = ollama.Client(host=f'http://127.0.0.1:{port}')
        client.pull('echo')
        started = time.monotonic()
        client.generate('echo', keep_alive=-1)
        load = time.monotonic() - started
        started = time.monotonic()
        client.generate('echo', keep_alive=0)
        wait_for(lambda: not client.ps().models, 'the unload')
        return load, time.monotonic() - started
    finally:
        process.terminate()
        process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def real_model_figures(workdir: pathlib.Path) -> Dict:
    bench = Bench(workdir, 'smollm2:135m', {'OLLAMA_EMULATOR_THREADS': '2'})
    try:
        assert bench.client.change_state('configure') and bench.client.change_state('activate')
        prompt = 'Write three sentences about robots.'
        node, direct = [], []
        for _ in range(max(3, REPEATS // 5)):
            node.append(bench.node_chat(prompt, temperature=0.0, max_tokens=64))
            direct.append(bench.direct_chat(prompt, {'temperature': 0, 'num_predict': 64}))
        return {'node_ttft_ms': spread([r['ttft'] * 1000 for r in node]),
                'direct_ttft_ms': spread([r['ttft'] * 1000 for r in direct]),
                'node_tokens_per_s': spread([r['tokens'] / r['total'] for r in node]),
                'direct_tokens_per_s': spread([r['tokens'] / r['total'] for r in direct])}
    finally:
        bench.close()


def machine() -> Dict:
    return {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
            'memory_gb': round(psutil.virtual_memory().total / 2 ** 30, 1),
            'python': platform.python_version(), 'ros_distro': os.environ.get('ROS_DISTRO'),
            'kernel': platform.release()}


def summary(results: Dict) -> str:
    s, r = results['scripted'], results['smollm2']
    t = s['transition_overhead_ms']
    rows = [
        ('TTFT added by the node (median / p95)',
         f"{s['ttft_ms']['added_median']:.1f} / {s['ttft_ms']['added_p95']:.1f} ms", '<= 5 ms'),
        ('Streaming, one feedback per chunk (model at 2,000 tokens/s)',
         f"{s['streaming']['node_tokens_per_s']['median']:.0f} tokens/s "
         f"({s['streaming']['ratio']:.2f} of direct), {s['streaming']['lost_feedback']} lost",
         '>= 1000 tokens/s, none lost'),
        ('Streaming, feedback coalesced every 5 ms (model at full speed)',
         f"{s['streaming_coalesced']['node_tokens_per_s']['median']:.0f} tokens/s "
         f"({s['streaming_coalesced']['ratio']:.2f} of direct), "
         f"{s['streaming_coalesced']['lost_feedback']} lost", ''),
        ('Node CPU per streamed token',
         f"{s['streaming']['node_cpu_ms_per_token']['median']:.3f} ms", ''),
        ('Cancel to server disconnect (p50 / p95)',
         f"{s['cancel_to_disconnect_ms']['median']:.1f} / "
         f"{s['cancel_to_disconnect_ms']['p95']:.1f} ms", 'p95 <= 50 ms'),
        ('Transition overhead (configure / activate / deactivate / cleanup)',
         ' / '.join(f'{t[k]:.0f}' for k in ('configure', 'activate', 'deactivate', 'cleanup'))
         + ' ms', '<= 100 ms'),
        ('Idle node (diagnostics at 1 Hz)',
         f"{s['idle']['cpu_percent_of_a_core']:.2f} % of a core, {s['idle']['rss_mb']:.0f} MB RSS,"
         f" sampling {s['idle']['diagnostics_sampling_cpu_ms']:.1f} ms CPU/period",
         '< 1 %, < 100 MB'),
        ('SmolLM2-135M TTFT node / direct (median)',
         f"{r['node_ttft_ms']['median']:.0f} / {r['direct_ttft_ms']['median']:.0f} ms", ''),
        ('SmolLM2-135M tokens/s node / direct (median, incl. prompt)',
         f"{r['node_tokens_per_s']['median']:.1f} / {r['direct_tokens_per_s']['median']:.1f}", ''),
    ]
    m = results['machine']
    lines = [f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python "
             f"{m['python']}, ROS 2 {m['ros_distro']} wheels; {results['repeats']} repeats.", '',
             '| figure | measured | target |', '| --- | --- | --- |']
    lines += [f'| {a} | {b} | {c} |' for a, b, c in rows]
    return '\n'.join(lines) + '\n'


def main() -> int:
    out = HERE / 'results'
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        workdir = pathlib.Path(directory)
        print('scripted models...', flush=True)
        scripted = scripted_figures(workdir)
        print('SmolLM2-135M...', flush=True)
        real = real_model_figures(workdir)
    results = {'machine': machine(), 'repeats': REPEATS, 'scripted': scripted,
               'smollm2': real}
    (out / 'results.json').write_text(json.dumps(results, indent=2))
    (out / 'summary.md').write_text(summary(results))
    print(summary(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
