"""A 30-turn conversation with the real SmolLM2-135M through the node: the node's session
(block trimming, `session_max_turns` 8) against a client that keeps the last 8 turns itself
and sends them as `context` with single-turn goals (its window slides by one turn per turn,
so the prompt's start changes on every turn once it is full).

Both run in one node, one after the other (one Ollama slot, num_parallel 1), with the same
questions, temperature 0 and an answer limit; then two node sessions alternate on that slot
for INTERLEAVED_TURNS turns each, which shows what sharing one slot costs. Then the node
session's conversation again with a PAUSE before each question, as a person talks (the node
trims and warms the cache between turns: core/warmup.py), and ACTIVATIONS deactivate/activate
cycles, each followed by a new session's first two turns (activate warms the cache). Per turn:
time to first token (the node's, from goal acceptance to the first token) and the prompt
tokens Ollama evaluated (prompt_eval_count: the tokens not reused from its cache).
Writes bench/results/sessions.{json,md,png} and, for the pauses,
bench/results/sessions_pauses.{json,md,png} (`make bench` runs it after run.py;
`make bench-sessions` alone, about 6 minutes here; `python bench/sessions.py pauses` only the
pauses). BENCH_QUICK=1: 4 turns of 8 tokens
(bench/sizes.py).
"""

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import ollama
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import ChatMessage
from s100_llm_msgs.srv import GetSession
from s100_llm_msgs.srv import ListSessions

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 's100_llm' / 'test'))

from harness import free_port  # noqa: E402,I100
from harness import NodeProcess  # noqa: E402
from harness import RosClient  # noqa: E402
from sizes import results_dir  # noqa: E402
from sizes import sized  # noqa: E402
from support import localhost_discovery  # noqa: E402

localhost_discovery(os.environ)
DOMAIN = int(os.environ.get('BENCH_DOMAIN', '80'))
TURNS = sized(30, 4)
WINDOW = sized(8, 2)    # session_max_turns of the node, turns kept by the client
MAX_TOKENS = sized(48, 8)   # per answer: the same work per turn in both conversations
INTERLEAVED_TURNS = sized(8, 2)   # per session
THREADS = 1             # llama.cpp threads: the fastest setting on the 2-core machine
SYSTEM = ('You are the voice of a home robot. Answer in one or two short sentences, '
          'friendly and concrete.')
QUESTIONS = [
    'Good morning! What can you do?', 'Can you check the kitchen?', 'Is the door open?',
    'What should I cook for breakfast?', 'How long do eggs take to boil?',
    'Remind me to water the plants.', 'Which room is the coldest?',
    'Tell me a fact about robots.', 'What is the weather like for a walk?',
    'Can you find my keys?', 'Where did you last see the cat?', 'Play some calm music.',
    'How many steps did I walk today?', 'Turn off the lights in the hall.',
    'What is on my calendar?', 'Suggest a short exercise.', 'Is the battery charged?',
    'Clean the living room later.', 'What did I ask you first today?',
    'Give me a tip for sleeping well.', 'Can you open the window?', 'What time is it?',
    'Order more coffee.', 'What is a good book to read?', 'Check on the baby monitor.',
    'Lock the front door.', 'How warm is the oven?', 'Tell me a joke.',
    'What should I remember for tomorrow?', 'Good night, robot.',
]
# Seconds between an answer and the next question in the paused conversation: a person
# listening to the answer and asking again (a 48-token answer takes about 10 s to speak, but
# the robot starts speaking with the first tokens). BENCH_PAUSE sets another.
PAUSE = float(os.environ.get('BENCH_PAUSE') or sized(3.0, 0.5))
ACTIVATIONS = sized(5, 1)   # deactivate/activate cycles: first and second turn after each
# Turn indices (0-based): 2-6 and 21-30 (quick: 2 and 4).
EARLY, LATE = sized((range(1, 6), range(20, 30)), (range(1, 2), range(3, 4)))


def start_node(workdir: pathlib.Path, port: int) -> Tuple[NodeProcess, RosClient]:
    values = {'model': 'smollm2:135m', 'ollama_bin': 's100-ollama-emulator',
              'host': f'127.0.0.1:{port}', 'models_dir': str(workdir / 'models'),
              'num_thread': THREADS, 'session_max_turns': WINDOW,
              'max_tokens_limit': 100000, 'max_prompt_chars': 100000}
    node = NodeProcess(DOMAIN, workdir / 'node.log', values)
    client = RosClient(DOMAIN)
    client.wait_for_node()
    assert client.change_state('configure') and client.change_state('activate'), \
        node.output()
    return node, client


def ask(client: RosClient, **fields: Any) -> Chat.Result:
    run = client.send_chat(Chat.Goal(max_tokens=MAX_TOKENS, temperature=0.0, seed=1,
                                     **fields))
    assert run.wait_accepted()
    result = run.wait_result(600)
    assert result.error_code == Chat.Result.NONE, result.error_message
    return result


def figures(result: Chat.Result) -> Dict[str, float]:
    return {'ttft_s': result.stats.time_to_first_token,
            'prompt_tokens': result.stats.prompt_tokens,
            'prompt_eval_s': result.stats.prompt_eval_duration,
            'answer_tokens': result.stats.completion_tokens}


def node_session(client: RosClient) -> List[Dict[str, float]]:
    turns = []
    for index, question in enumerate(QUESTIONS[:TURNS]):
        result = ask(client, prompt=question, session_id='bench',
                     system_prompt=SYSTEM if index == 0 else '')
        turns.append({**figures(result), 'kept_turns': result.session_turns})
        print(f"node   turn {index + 1:2d}: {turns[-1]['ttft_s'] * 1000:7.0f} ms, "
              f"{turns[-1]['prompt_tokens']:4d} prompt tokens evaluated", flush=True)
    return turns


def paused_session(client: RosClient) -> List[Dict[str, Any]]:
    """The node session's conversation again (a new session), with a PAUSE before each
    question, as a person talks: what the node does between turns (warm-ups) can hide there.
    after_trim: the session was trimmed after the previous turn (its kept turns fell)."""
    turns: List[Dict[str, Any]] = []
    for index, question in enumerate(QUESTIONS[:TURNS]):
        time.sleep(PAUSE)
        result = ask(client, prompt=question, session_id='paused',
                     system_prompt=SYSTEM if index == 0 else '')
        after_trim = index >= 2 and turns[-1]['kept_turns'] <= turns[-2]['kept_turns']
        turns.append({**figures(result), 'kept_turns': result.session_turns,
                      'after_trim': after_trim})
        print(f"paused turn {index + 1:2d}: {turns[-1]['ttft_s'] * 1000:7.0f} ms, "
              f"{turns[-1]['prompt_tokens']:4d} prompt tokens evaluated"
              f"{' (after a trim)' if after_trim else ''}", flush=True)
    return turns


def after_activate(client: RosClient) -> List[Dict[str, Dict[str, float]]]:
    """ACTIVATIONS times: deactivate, activate (the model is unloaded and loaded again), a
    PAUSE, the first turn of a new session, a PAUSE, its second turn. Each session asks
    questions of its own: a first question asked before would be in the cache (activate warms
    the session used last)."""
    pairs = []
    for cycle in range(ACTIVATIONS):
        assert client.change_state('deactivate') and client.change_state('activate')
        pair = {}
        for name, question in (('first', QUESTIONS[2 * cycle]),
                               ('second', QUESTIONS[2 * cycle + 1])):
            time.sleep(PAUSE)
            pair[name] = figures(ask(client, prompt=question, session_id=f'fresh-{cycle}',
                                     system_prompt=SYSTEM if name == 'first' else ''))
        pairs.append(pair)
        print(f"activation {cycle + 1}: first turn {pair['first']['ttft_s'] * 1000:.0f} ms, "
              f"second {pair['second']['ttft_s'] * 1000:.0f} ms", flush=True)
    return pairs


def pause_summary(turns: List[Dict[str, Any]], pairs: List[Dict[str, Dict[str, float]]]
                  ) -> Dict[str, float]:
    """Median TTFT of the turns right after a trim against the ordinary turns (not the first
    two, not after a trim), and of the first turn after activate against the second."""
    trimmed = [t['ttft_s'] for t in turns if t['after_trim']]
    ordinary = [t['ttft_s'] for t in turns[2:] if not t['after_trim']]
    first = statistics.median(p['first']['ttft_s'] for p in pairs)
    second = statistics.median(p['second']['ttft_s'] for p in pairs)
    after = statistics.median(trimmed) if trimmed else 0.0
    return {'after_trim_ttft_ms': after * 1000, 'after_trim_turns': len(trimmed),
            'ordinary_ttft_ms': statistics.median(ordinary) * 1000,
            'after_trim_over_ordinary': after / statistics.median(ordinary),
            'after_trim_prompt_tokens_median': statistics.median(
                t['prompt_tokens'] for t in turns if t['after_trim']) if trimmed else 0,
            'first_ttft_ms': first * 1000, 'second_ttft_ms': second * 1000,
            'first_over_second': first / second}


def sliding_client(client: RosClient) -> List[Dict[str, float]]:
    history: List[ChatMessage] = []
    turns = []
    for index, question in enumerate(QUESTIONS[:TURNS]):
        result = ask(client, prompt=question, system_prompt=SYSTEM,
                     context=history[-2 * WINDOW:])
        history += [ChatMessage(role='user', content=question),
                    ChatMessage(role='assistant', content=result.text)]
        turns.append(figures(result))
        print(f"client turn {index + 1:2d}: {turns[-1]['ttft_s'] * 1000:7.0f} ms, "
              f"{turns[-1]['prompt_tokens']:4d} prompt tokens evaluated", flush=True)
    return turns


def interleaved(client: RosClient) -> List[Dict[str, float]]:
    turns = []
    for index in range(INTERLEAVED_TURNS):
        # Different questions: the two histories share only the system prompt.
        for session, question in (('left', QUESTIONS[index]), ('right', QUESTIONS[-1 - index])):
            result = ask(client, prompt=question, session_id=f'interleaved-{session}',
                         system_prompt=SYSTEM if index == 0 else '')
            turns.append({**figures(result), 'session': session})
            print(f"{session:6s} turn {index + 1:2d}: {turns[-1]['ttft_s'] * 1000:7.0f} ms, "
                  f"{turns[-1]['prompt_tokens']:4d} prompt tokens evaluated", flush=True)
    return turns


def count_check(client: RosClient, port: int) -> Dict[str, int]:
    """The node's count of the session's history (ListSessions) against the model's: the
    stored history (GetSession) evaluated whole by a direct request after an unrelated one
    took the slot (prompt_eval_count then counts every token)."""
    listed = client._call(ListSessions, '/llm/list_sessions', ListSessions.Request()).sessions
    node_count = next(s.context_tokens for s in listed if s.session_id == 'bench')
    stored = client._call(GetSession, '/llm/get_session', GetSession.Request(session_id='bench'))
    history = [{'role': 'system', 'content': stored.system_prompt}] + [
        {'role': m.role, 'content': m.content} for m in stored.messages]
    direct = ollama.Client(host=f'http://127.0.0.1:{port}', timeout=600)
    options = {'num_predict': 1, 'num_thread': THREADS}
    direct.chat('smollm2:135m', [{'role': 'user', 'content': 'Something else entirely.'}],
                options=options, keep_alive=-1)
    model_count = direct.chat('smollm2:135m', history, options=options,
                              keep_alive=-1).prompt_eval_count
    return {'node_context_tokens': node_count, 'model_prompt_eval_count': model_count}


def summary(turns: List[Dict[str, float]]) -> Dict[str, float]:
    early = statistics.median(turns[i]['ttft_s'] for i in EARLY)
    late = statistics.median(turns[i]['ttft_s'] for i in LATE)
    return {'early_ttft_ms': early * 1000, 'late_ttft_ms': late * 1000,
            'late_over_early': late / early,
            'late_max_ttft_ms': max(turns[i]['ttft_s'] for i in LATE) * 1000,
            'late_prompt_tokens_median': statistics.median(
                turns[i]['prompt_tokens'] for i in LATE),
            'prompt_tokens_total': sum(t['prompt_tokens'] for t in turns),
            # prompt tokens/s of this machine, from the turns that evaluated the most
            'prompt_rate': statistics.median(
                t['prompt_tokens'] / t['prompt_eval_s'] for t in turns
                if t['prompt_eval_s'] > 0 and t['prompt_tokens'] >= 100) if any(
                t['prompt_tokens'] >= 100 for t in turns) else 0.0}


def turns(indices: range) -> str:
    """0-based turn indices as the table numbers turns: '2-6'."""
    first, last = indices[0] + 1, indices[-1] + 1
    return str(first) if first == last else f'{first}-{last}'


def table(results: Dict[str, Any]) -> str:
    node, client = results['node'], results['client']
    lines = ['| turn | node: TTFT (ms) | node: prompt tokens evaluated | node: turns kept | '
             'client: TTFT (ms) | client: prompt tokens evaluated |',
             '| --- | --- | --- | --- | --- | --- |']
    for index, (mine, theirs) in enumerate(zip(node, client)):
        lines.append(f"| {index + 1} | {mine['ttft_s'] * 1000:.0f} | {mine['prompt_tokens']} | "
                     f"{mine['kept_turns']} | {theirs['ttft_s'] * 1000:.0f} | "
                     f"{theirs['prompt_tokens']} |")
    lines.append('')
    for name in ('node', 'client'):
        s = results['summary'][name]
        lines.append(f"- {name}: TTFT median turns {turns(EARLY)} {s['early_ttft_ms']:.0f} ms, "
                     f"turns {turns(LATE)} {s['late_ttft_ms']:.0f} ms "
                     f"({s['late_over_early']:.2f}x; worst {s['late_max_ttft_ms']:.0f} ms); "
                     'prompt tokens evaluated per late turn '
                     f"(median) {s['late_prompt_tokens_median']:.0f}, in all {TURNS} turns "
                     f"{s['prompt_tokens_total']}")
    check = results['count_check']
    lines.append(f"- the session's history after {TURNS} turns: "
                 f"{check['node_context_tokens']} tokens by the node's count, "
                 f"{check['model_prompt_eval_count']} evaluated whole by "
                 'the model (with the generation prompt)')
    pairs = results['interleaved']
    lines.append('- two sessions alternating on one slot: prompt tokens evaluated per turn '
                 f"(median) {statistics.median(t['prompt_tokens'] for t in pairs[2:]):.0f}, "
                 f"TTFT median {statistics.median(t['ttft_s'] for t in pairs[2:]) * 1000:.0f} "
                 'ms')
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, label in (('node', f'node session (block trimming, {WINDOW} turns)'),
                        ('client', f'client context (last {WINDOW} turns, slides by one)')):
        turns = results[name]
        numbers = list(range(1, len(turns) + 1))
        top.plot(numbers, [t['ttft_s'] * 1000 for t in turns], marker='o', label=label)
        bottom.plot(numbers, [t['prompt_tokens'] for t in turns], marker='o', label=label)
    top.set_ylabel('time to first token (ms)')
    bottom.set_ylabel('prompt tokens evaluated')
    bottom.set_xlabel('turn')
    top.legend(fontsize=8)
    figure.suptitle(f'SmolLM2-135M, {THREADS} llama.cpp thread, {TURNS} turns, answers of up to '
                    f'{MAX_TOKENS} tokens')
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def pauses_table(results: Dict[str, Any]) -> str:
    paused = results['summary']
    lines = ['| turn | TTFT (ms) | prompt tokens evaluated | turns kept | right after a trim |',
             '| --- | --- | --- | --- | --- |']
    for index, t in enumerate(results['paused']):
        lines.append(f"| {index + 1} | {t['ttft_s'] * 1000:.0f} | {t['prompt_tokens']} | "
                     f"{t['kept_turns']} | {'yes' if t['after_trim'] else ''} |")
    lines.append('')
    lines.append(f'- with a {PAUSE:g} s pause before each question: TTFT median of the '
                 f"{paused['after_trim_turns']} turns right after a trim "
                 f"{paused['after_trim_ttft_ms']:.0f} ms ("
                 f"{paused['after_trim_prompt_tokens_median']:.0f} prompt tokens evaluated), "
                 f"of the ordinary turns {paused['ordinary_ttft_ms']:.0f} ms "
                 f"({paused['after_trim_over_ordinary']:.2f}x)")
    lines.append(f'- after activate ({ACTIVATIONS} times, {PAUSE:g} s pauses): TTFT median of '
                 f"the first turn {paused['first_ttft_ms']:.0f} ms, of the second "
                 f"{paused['second_ttft_ms']:.0f} ms ({paused['first_over_second']:.2f}x)")
    return '\n'.join(lines) + '\n'


def pauses_plot(results: Dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4),
                                            gridspec_kw={'width_ratios': [3, 1]})
    paused = results['paused']
    numbers = list(range(1, len(paused) + 1))
    left.plot(numbers, [t['ttft_s'] * 1000 for t in paused], marker='o',
              label=f'node session, {PAUSE:g} s pause before each question')
    trimmed = [n for n, t in zip(numbers, paused) if t['after_trim']]
    left.scatter(trimmed, [paused[n - 1]['ttft_s'] * 1000 for n in trimmed], s=140,
                 facecolors='none', edgecolors='red', zorder=3, label='right after a trim')
    left.set_xlabel('turn')
    left.set_ylabel('time to first token (ms)')
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    pairs = results['activations']
    for name in ('first', 'second'):
        right.plot(range(1, len(pairs) + 1), [p[name]['ttft_s'] * 1000 for p in pairs],
                   marker='o', label=f'{name} turn after activate')
    right.set_xlabel('activation')
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    figure.suptitle(f'SmolLM2-135M, {THREADS} llama.cpp thread, session_max_turns {WINDOW}, '
                    f'answers of up to {MAX_TOKENS} tokens')
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def conversation(client: RosClient, port: int, out: pathlib.Path) -> None:
    """The node session against the client's window, and two sessions on one slot."""
    results: Dict[str, Any] = {'node': node_session(client)}
    results['count_check'] = count_check(client, port)
    results['client'] = sliding_client(client)
    results['interleaved'] = interleaved(client)
    results['summary'] = {name: summary(results[name]) for name in ('node', 'client')}
    (out / 'sessions.json').write_text(json.dumps(results, indent=1))
    (out / 'sessions.md').write_text(table(results))
    plot(results, out / 'sessions.png')
    print(table(results))


def pauses(client: RosClient, port: int, out: pathlib.Path) -> None:
    """A conversation with pauses, and the first turns after activate."""
    results: Dict[str, Any] = {'paused': paused_session(client)}
    results['activations'] = after_activate(client)
    results['summary'] = pause_summary(results['paused'], results['activations'])
    (out / 'sessions_pauses.json').write_text(json.dumps(results, indent=1))
    (out / 'sessions_pauses.md').write_text(pauses_table(results))
    pauses_plot(results, out / 'sessions_pauses.png')
    print(pauses_table(results))


PARTS = {'conversation': conversation, 'pauses': pauses}


def main(argv: List[str]) -> int:
    """argv: the parts to run (default: all), e.g. `python bench/sessions.py pauses`."""
    parts = argv or list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}")
        return 2
    out = results_dir()
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        node, client = start_node(pathlib.Path(directory), port)
        try:
            for part in parts:
                PARTS[part](client, port, out)
        finally:
            client.close()
            node.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
