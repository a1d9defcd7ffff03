"""`make bench`: what the node adds over calling Ollama directly, measured side by side.

Every figure is taken in the same run against the same emulator server (the node's managed
one, reached directly with the official `ollama` client for the baseline), repeated, and
reported with its spread. What the node adds is split from what it cannot change: rclpy's and
DDS's own cost is measured against bench/floor_server.py (a bare action server), and the
server's own start/load/unload/stop time by the bench itself against a server of the same
executable and models (see own_work_figures). Writes bench/results/results.json, summary.md
and bench.png. These machines are noisy: ratios say more than absolute times. BENCH_QUICK=1
runs it all with tiny sizes (bench/sizes.py).
"""

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import httpx
from lifecycle_msgs.srv import ChangeState
import ollama
import psutil
from s100_llm_msgs.action import Chat

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 's100_llm' / 'test'))

from harness import free_port  # noqa: E402,I100
from harness import NodeProcess  # noqa: E402
from harness import RosClient  # noqa: E402
from harness import TRANSITIONS  # noqa: E402
from harness import wait_for  # noqa: E402
from sizes import results_dir  # noqa: E402
from sizes import sized  # noqa: E402
from support import localhost_discovery  # noqa: E402

localhost_discovery(os.environ)
REPEATS = int(os.environ.get('BENCH_REPEATS', sized('20', '2')))
# Rounds of the slower measurements (transitions, streaming, the real model).
ROUNDS = sized(3, 1)
# The first goals of a new client and server pair still wait on DDS discovery (up to seconds
# for the floor server, which is measured right after it starts): left out of the figures.
WARMUP = sized(3, 1)
FLOOR_WARMUP = sized(10, 2)
NODE_DOMAIN = int(os.environ.get('BENCH_DOMAIN', '77'))
FLOOR_DOMAIN = NODE_DOMAIN + 1
TRANSITIONS_MEASURED = ('configure', 'activate', 'deactivate', 'cleanup')
# Tokens of one streaming goal, and of one answer of the real model.
STREAMED_TOKENS = sized(4000, 200)
REAL_TOKENS = sized(64, 8)


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def spread(values: List[float]) -> Dict[str, float]:
    return {'median': statistics.median(values), 'p95': percentile(values, 0.95),
            'min': min(values), 'max': max(values), 'n': len(values)}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class Bench:
    """The node as a process with a client, and a direct `ollama` client to the same server."""

    def __init__(self, workdir: pathlib.Path, model: str, env: Dict[str, str],
                 parameters: Optional[Dict[str, Any]] = None) -> None:
        self.port = free_port()
        values = {'model': model, 'ollama_bin': 's100-ollama-emulator',
                  'host': f'127.0.0.1:{self.port}', 'models_dir': str(workdir / 'models'),
                  'diagnostics_period': 1.0, 'max_tokens_limit': 100000}
        values.update(parameters or {})
        self.node = NodeProcess(NODE_DOMAIN, workdir / f'{model.replace(":", "_")}.log',
                                values, env)
        self.client = RosClient(NODE_DOMAIN)
        self.client.wait_for_node()
        # One service client for every transition, as a robot's lifecycle manager keeps: a
        # new one per call would add DDS discovery to each measurement.
        self._change_state = self.client.node.create_client(ChangeState, '/llm/change_state')
        wait_for(lambda: self._change_state.wait_for_service(timeout_sec=0.1), 'change_state')
        self.direct = ollama.Client(host=f'http://127.0.0.1:{self.port}')
        self.model = model

    def close(self) -> None:
        self.client.close()
        self.node.stop()

    def transition(self, name: str) -> float:
        """Seconds from the ChangeState request to its answer."""
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[name]
        answered = threading.Event()
        started = time.monotonic()
        future = self._change_state.call_async(request)
        future.add_done_callback(lambda _: answered.set())
        assert answered.wait(300) and future.result().success, self.node.output()
        return time.monotonic() - started

    def node_chat(self, prompt: str, **fields: Any) -> Dict[str, Any]:
        sent = time.monotonic()
        run = self.client.send_chat(Chat.Goal(prompt=prompt, **fields))
        assert run.wait_accepted()
        # Stamped in the callback: the harness's wait_result polls every 20 ms.
        arrived: List[float] = []
        answered = threading.Event()
        result_future = run.handle.get_result_async()
        result_future.add_done_callback(
            lambda _: (arrived.append(time.monotonic()), answered.set()))
        assert answered.wait(600), 'no result'
        result, done = result_future.result().result, arrived[0]
        try:
            wait_for(lambda: len(run.feedback) >= result.feedback_count, 'feedback', 5)
        except AssertionError:
            pass   # counted as lost below
        return {'ttft': (run.first_feedback_at or done) - sent, 'total': done - sent,
                'tokens': result.stats.completion_tokens, 'feedback': len(run.feedback),
                'feedback_sent': result.feedback_count,
                'text_complete': run.streamed_text == result.text}

    def direct_chat(self, prompt: str, options: Optional[Dict[str, Any]] = None
                    ) -> Dict[str, float]:
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


def transition_figures(workdir: pathlib.Path) -> Dict[str, Any]:
    """Each transition as a client sees it, minus the server's own part of that transition."""
    names = TRANSITIONS_MEASURED
    cycles = max(ROUNDS, REPEATS // 2)
    seen: Dict[str, List[float]] = {name: [] for name in names}
    bench = Bench(workdir, 'echo:latest', {})
    try:
        for _ in range(cycles):
            for name in names:
                seen[name].append(bench.transition(name))
    finally:
        bench.close()
    own = own_work_figures(workdir, 'echo:latest', cycles)
    overhead = {name: [(s - o) * 1000 for s, o in zip(seen[name], own[name])] for name in names}
    return {'transition_ms': {name: spread([v * 1000 for v in seen[name]]) for name in names},
            'server_own_ms': {name: spread([v * 1000 for v in own[name]]) for name in names},
            'overhead_ms': {name: spread(overhead[name]) for name in names}}


def own_work_figures(workdir: pathlib.Path, model: str, cycles: int) -> Dict[str, List[float]]:
    """The server's own part of each transition, in seconds, measured by the bench against a
    server it runs itself (the node's executable and models directory, another port), through
    Ollama's API only: spawn until it answers (configure), load until /api/ps lists the model
    (activate), unload until /api/ps lists nothing (deactivate), SIGTERM until it exits
    (cleanup). Nothing here reads the node's log, whose wording may change."""
    own: Dict[str, List[float]] = {name: [] for name in TRANSITIONS_MEASURED}
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    env = dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{port}', OLLAMA_MODELS=str(workdir / 'models'))

    def answers() -> bool:
        try:
            return httpx.get(f'{url}/api/version', timeout=1.0).is_success
        except httpx.TransportError:
            return False

    def loaded() -> bool:
        return bool(httpx.get(f'{url}/api/ps', timeout=5.0).json()['models'])

    def timed(step: Any, done: Any) -> float:
        started = time.monotonic()
        step()
        while not done():     # polled finely: the steps take milliseconds
            if time.monotonic() - started > 300:
                raise AssertionError(f'{done.__name__} did not happen within 300 s')
            time.sleep(0.002)
        return time.monotonic() - started

    for _ in range(cycles):
        server: List[subprocess.Popen] = []
        try:
            own['configure'].append(timed(lambda: server.append(subprocess.Popen(
                ['s100-ollama-emulator', 'serve'], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)), answers))
            direct = ollama.Client(host=url)
            own['activate'].append(timed(lambda: direct.generate(model, keep_alive=-1), loaded))
            own['deactivate'].append(timed(lambda: direct.generate(model, keep_alive=0),
                                           lambda: not loaded()))
            own['cleanup'].append(timed(server[0].terminate,
                                        lambda: server[0].poll() is not None))
        finally:
            for process in server:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return own


def ttft_and_idle_figures(workdir: pathlib.Path) -> Dict[str, Any]:
    figures: Dict[str, Any] = {}
    bench = Bench(workdir, 'echo:latest', {})
    try:
        bench.transition('configure')
        bench.transition('activate')
        node_ttft, direct_ttft = [], []
        for index in range(WARMUP + REPEATS):     # interleaved, the warm-up left out
            node = bench.node_chat(f'hello {index}')['ttft']
            direct = bench.direct_chat(f'hello {index}')['ttft']
            if index >= WARMUP:
                node_ttft.append(node * 1000)
                direct_ttft.append(direct * 1000)
        floor = floor_ttft_ms()
        added = [n - d for n, d in zip(node_ttft, direct_ttft)]
        figures['ttft_ms'] = {
            'node': spread(node_ttft), 'direct': spread(direct_ttft), 'rclpy_floor': spread(floor),
            'added': spread(added),
            'added_by_the_node_itself': statistics.median(added) - statistics.median(floor)}
        figures['ttft_samples_ms'] = {'node': node_ttft, 'direct': direct_ttft,
                                      'rclpy_floor': floor}
        # Idle with diagnostics at 1 Hz, active, no chat.
        process = psutil.Process(bench.node.pid)
        cpu_before, wall_before = cpu_seconds(process), time.monotonic()
        time.sleep(float(os.environ.get('BENCH_IDLE_SECONDS', sized('30', '2'))))
        cpu = cpu_seconds(process) - cpu_before
        memory = process.memory_full_info()
        figures['idle'] = {'cpu_percent_of_a_core': 100 * cpu / (time.monotonic() - wall_before),
                           'rss_mb': memory.rss / 2 ** 20, 'uss_mb': memory.uss / 2 ** 20,
                           'threads': process.num_threads()}
        statuses = bench.client.fresh_statuses()
        sampling = {kv.key: kv.value for kv in statuses['llm: System CPU'].values}
        figures['idle']['diagnostics_sampling_cpu_ms'] = float(
            sampling['diagnostics sampling CPU (ms)'])
    finally:
        bench.close()
    figures['idle']['bare_rclpy_node_rss_mb'] = bare_rclpy_rss_mb()
    return figures


def floor_ttft_ms() -> List[float]:
    """Goal sent to first feedback against the bare action server, in ms."""
    server = subprocess.Popen([sys.executable, str(HERE / 'floor_server.py')],
                              env=dict(os.environ, ROS_DOMAIN_ID=str(FLOOR_DOMAIN)))
    client = RosClient(FLOOR_DOMAIN)
    try:
        delays = []
        for index in range(FLOOR_WARMUP + REPEATS):
            sent = time.monotonic()
            run = client.send_chat(Chat.Goal(prompt='x'))
            assert run.wait_accepted()
            run.wait_result()
            if index >= FLOOR_WARMUP:
                delays.append((run.first_feedback_at - sent) * 1000)
        return delays
    finally:
        client.close()
        server.terminate()
        server.wait()


def bare_rclpy_rss_mb() -> float:
    """RSS of a Python process with an rclpy lifecycle node spinning: what any rclpy node costs."""
    code = ('import rclpy, psutil\nfrom rclpy.lifecycle import LifecycleNode\n'
            'from rclpy.executors import MultiThreadedExecutor\nrclpy.init()\n'
            "node = LifecycleNode('bare')\nexecutor = MultiThreadedExecutor(num_threads=13)\n"
            'executor.add_node(node)\nexecutor.spin_once(timeout_sec=0.5)\n'
            'print(psutil.Process().memory_info().rss)')
    output = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=dict(os.environ, ROS_DOMAIN_ID=str(FLOOR_DOMAIN)), check=True)
    return int(output.stdout.split()[-1]) / 2 ** 20


def streaming_figures(workdir: pathlib.Path, env: Dict[str, str],
                      parameters: Dict[str, Any]) -> Dict[str, Any]:
    bench = Bench(workdir, 'endless:latest', env, parameters)
    try:
        bench.transition('configure')
        bench.transition('activate')
        process = psutil.Process(bench.node.pid)
        node_rates, direct_rates, lost, complete, cpu_per_token = [], [], [], [], []
        for _ in range(max(ROUNDS, REPEATS // 4)):
            cpu_before = cpu_seconds(process)
            run = bench.node_chat('go', max_tokens=STREAMED_TOKENS)
            cpu_per_token.append((cpu_seconds(process) - cpu_before) / run['tokens'])
            node_rates.append(run['tokens'] / run['total'])
            lost.append(run['feedback_sent'] - run['feedback'])
            complete.append(run['text_complete'])
            direct = bench.direct_chat('go', {'num_predict': STREAMED_TOKENS})
            direct_rates.append(direct['tokens'] / direct['total'])
        return {
            'node_tokens_per_s': spread(node_rates), 'direct_tokens_per_s': spread(direct_rates),
            'ratio': statistics.median(node_rates) / statistics.median(direct_rates),
            'feedback_messages_per_goal': run['feedback_sent'], 'tokens_per_goal': run['tokens'],
            'lost_feedback_messages': max(lost), 'every_token_delivered': all(complete),
            'node_cpu_ms_per_token': spread([v * 1000 for v in cpu_per_token])}
    finally:
        bench.close()


def cancel_figures(workdir: pathlib.Path) -> Dict[str, Any]:
    bench = Bench(workdir, 'endless:latest', {'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    url = f'http://127.0.0.1:{bench.port}/emulator/stats'
    try:
        bench.transition('configure')
        bench.transition('activate')
        delays = []
        for _ in range(REPEATS):
            seen = len(httpx.get(url).json()['disconnects'])
            run = bench.client.send_chat(Chat.Goal(prompt='go', max_tokens=100000))
            assert run.wait_accepted()
            wait_for(lambda: run.feedback, 'streaming')
            requested = time.monotonic()
            run.cancel()
            stats = wait_for(lambda: (lambda s: s if len(s['disconnects']) > seen else None)(
                httpx.get(url).json()), 'the disconnect')
            delays.append((stats['disconnects'][-1]['at'] - requested) * 1000)
            run.wait_result()
        return spread(delays)
    finally:
        bench.close()


def real_model_figures(workdir: pathlib.Path, threads: int) -> Dict[str, Any]:
    """SmolLM2-135M with `threads` llama.cpp threads: with fewer threads than cores the node
    and its client have a core of their own; with all cores they compete with the model."""
    bench = Bench(workdir, 'smollm2:135m', {}, {'num_thread': threads})
    try:
        bench.transition('configure')
        bench.transition('activate')
        prompt = 'Write three sentences about robots.'
        node, direct = [], []
        for _ in range(max(ROUNDS, REPEATS // 5)):
            node.append(bench.node_chat(prompt, temperature=0.0, max_tokens=REAL_TOKENS))
            # The node's num_thread too: Ollama reloads the model for another one.
            direct.append(bench.direct_chat(prompt, {'temperature': 0, 'num_predict': REAL_TOKENS,
                                                     'num_thread': threads}))
        return {'node_ttft_ms': spread([r['ttft'] * 1000 for r in node]),
                'direct_ttft_ms': spread([r['ttft'] * 1000 for r in direct]),
                'node_tokens_per_s': spread([r['tokens'] / r['total'] for r in node]),
                'direct_tokens_per_s': spread([r['tokens'] / r['total'] for r in direct])}
    finally:
        bench.close()


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
                   if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return {'cpu': cpu, 'cores': os.cpu_count(),
            'memory_gb': round(psutil.virtual_memory().total / 2 ** 30, 1),
            'python': platform.python_version(), 'ros_distro': os.environ.get('ROS_DISTRO'),
            'kernel': platform.release()}


def summary(results: Dict[str, Any]) -> str:
    s, r = results['scripted'], results['smollm2']
    ttft, idle = s['ttft_ms'], s['idle']
    overhead = s['transitions']['overhead_ms']
    default, per_chunk = s['streaming'], s['streaming_per_chunk']

    def streamed(figures: Dict[str, Any]) -> str:
        return (f"{figures['node_tokens_per_s']['median']:.0f} tokens/s "
                f"({figures['ratio']:.2f} of direct), "
                f"{figures['feedback_messages_per_goal']} messages for "
                f"{figures['tokens_per_goal']} tokens, "
                f"{figures['lost_feedback_messages']} messages lost, every token delivered: "
                f"{'yes' if figures['every_token_delivered'] else 'no'}")
    rows = [
        ('TTFT added over calling Ollama directly (median / p95)',
         f"{ttft['added']['median']:.1f} / {ttft['added']['p95']:.1f} ms", '<= 5 ms median'),
        ('... of which rclpy + DDS (bare action server, median / p95)',
         f"{ttft['rclpy_floor']['median']:.1f} / {ttft['rclpy_floor']['p95']:.1f} ms", ''),
        ('... of which the node itself (median)',
         f"{ttft['added_by_the_node_itself']:.1f} ms", ''),
        ('Streaming, default feedback (10 ms), model at full speed', streamed(default),
         '>= 1000 tokens/s, none lost'),
        ('Streaming, one message per chunk, model at 2,000 tokens/s', streamed(per_chunk), ''),
        ('Node CPU per streamed token (default / per chunk)',
         f"{default['node_cpu_ms_per_token']['median']:.3f} / "
         f"{per_chunk['node_cpu_ms_per_token']['median']:.3f} ms", ''),
        ('Cancel to server disconnect (p50 / p95)',
         f"{s['cancel_to_disconnect_ms']['median']:.1f} / "
         f"{s['cancel_to_disconnect_ms']['p95']:.1f} ms", 'p95 <= 50 ms'),
        ("Transition overhead over the server's own work (configure / activate / deactivate / "
         'cleanup, median)',
         ' / '.join(f"{overhead[k]['median']:.0f}"
                    for k in ('configure', 'activate', 'deactivate', 'cleanup')) + ' ms',
         '<= 100 ms'),
        ('Idle node (active, diagnostics at 1 Hz)',
         f"{idle['cpu_percent_of_a_core']:.2f} % of a core, {idle['rss_mb']:.0f} MB RSS "
         f"(a bare rclpy lifecycle node: {idle['bare_rclpy_node_rss_mb']:.0f} MB), sampling "
         f"{idle['diagnostics_sampling_cpu_ms']:.1f} ms CPU/period", '< 1 %, < 100 MB'),
    ]
    for label, key in (('1 llama.cpp thread', 'one_thread'),
                       (f"{results['machine']['cores']} llama.cpp threads (all cores)",
                        'all_cores')):
        rows += [
            (f'SmolLM2-135M, {label}: TTFT node / direct (median)',
             f"{r[key]['node_ttft_ms']['median']:.0f} / "
             f"{r[key]['direct_ttft_ms']['median']:.0f} ms", ''),
            (f'SmolLM2-135M, {label}: tokens/s node / direct (median, incl. prompt)',
             f"{r[key]['node_tokens_per_s']['median']:.1f} / "
             f"{r[key]['direct_tokens_per_s']['median']:.1f}", '')]
    m = results['machine']
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python "
             f"{m['python']}, ROS 2 {m['ros_distro']} wheels; {results['repeats']} repeats.", '',
             '| figure | measured | target |', '| --- | --- | --- |']
    lines += [f'| {a} | {b} | {c} |' for a, b, c in rows]
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Any], path: pathlib.Path) -> None:
    """Time to first token as distributions, and each transition split into server and node."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    s = results['scripted']
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
    for label, key in (('Ollama directly', 'direct'), ('through /llm/chat', 'node'),
                       ('bare rclpy action (floor)', 'rclpy_floor')):
        values = sorted(s['ttft_samples_ms'][key])
        left.step(values, [(i + 1) / len(values) for i in range(len(values))], where='post',
                  label=label)
    left.set_xlabel('time to first token (ms)')
    left.set_ylabel('fraction of goals')
    left.set_xscale('log')
    left.legend()
    names = ['configure', 'activate', 'deactivate', 'cleanup']
    own = [s['transitions']['server_own_ms'][n]['median'] for n in names]
    added = [s['transitions']['overhead_ms'][n]['median'] for n in names]
    right.bar(names, own, label="server's own work")
    right.bar(names, added, bottom=own, label='node overhead')
    right.set_ylabel('ms (median)')
    right.legend()
    figure.suptitle(f"s100_llm bench, {results['machine']['cpu']}, "
                    f"{results['machine']['cores']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> int:
    out = results_dir()
    with tempfile.TemporaryDirectory() as directory:
        workdir = pathlib.Path(directory)
        print('transitions...', flush=True)
        scripted: Dict[str, Any] = {'transitions': transition_figures(workdir)}
        print('time to first token and idle cost...', flush=True)
        scripted.update(ttft_and_idle_figures(workdir))
        print('streaming...', flush=True)
        scripted['streaming'] = streaming_figures(workdir, {}, {})
        scripted['streaming_per_chunk'] = streaming_figures(
            workdir, {'OLLAMA_EMULATOR_TOKEN_RATE': '2000'}, {'feedback_min_interval': 0.0})
        print('cancel...', flush=True)
        scripted['cancel_to_disconnect_ms'] = cancel_figures(workdir)
        print('SmolLM2-135M...', flush=True)
        real = {'one_thread': real_model_figures(workdir, 1),
                'all_cores': real_model_figures(workdir, os.cpu_count() or 1)}
    results = {'machine': machine(), 'repeats': REPEATS, 'scripted': scripted, 'smollm2': real}
    (out / 'results.json').write_text(json.dumps(results, indent=2))
    (out / 'summary.md').write_text(summary(results))
    plot(results, out / 'bench.png')
    print(summary(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
