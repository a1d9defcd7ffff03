"""Issue: the chat action. Streaming, cancel, concurrency, sessions, thinking, errors, CLI."""

import os
import signal
import subprocess

from action_msgs.msg import GoalStatus
import httpx
import pytest
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import ChatMessage

from harness import install_prefix
from harness import RosClient
from harness import wait_for


def assert_contiguous(run):
    # Feedback and result travel on separate topics: the last feedback may come after it.
    wait_for(lambda: len(run.feedback) >= run.result.feedback_count, 'every feedback message')
    assert [f.seq for f in run.feedback] == list(range(len(run.feedback)))
    assert run.streamed_text == run.result.text
    assert ''.join(f.thinking_delta for f in run.feedback) == run.result.thinking


def test_every_chunk_is_feedback_and_the_result_has_everything(active):
    llm = active(feedback_min_interval=0.0)
    prompt = ' '.join(f'word{i}' for i in range(200))
    run = llm.client.chat(prompt, system_prompt='be brief')
    assert run.status == GoalStatus.STATUS_SUCCEEDED
    assert run.result.text == f'system: be brief\nuser: {prompt}\n'
    assert_contiguous(run)
    assert len(run.feedback) == run.result.stats.completion_tokens   # one chunk, one feedback
    stats = run.result.stats
    assert run.result.done_reason == 'stop' and run.result.model == 'echo:latest'
    assert run.result.error_code == Chat.Result.NONE and run.result.error_message == ''
    assert stats.prompt_tokens > 200 and stats.time_to_first_token > 0
    assert stats.tokens_per_second > 0 and stats.total_duration >= stats.eval_duration > 0


def test_coalesced_feedback_loses_nothing(active):
    llm = active(feedback_min_interval=0.05, env={'OLLAMA_EMULATOR_TOKEN_RATE': '2000'})
    run = llm.client.chat('go', max_tokens=400)
    assert_contiguous(run)
    assert len(run.feedback) < run.result.stats.completion_tokens


def test_by_default_a_model_at_full_speed_streams_every_token_in_fewer_messages(active):
    llm = active(model='endless:latest')
    run = llm.client.chat('go', max_tokens=3000)
    assert_contiguous(run)
    assert run.streamed_text.split() == [f'tok{i}' for i in range(3000)]
    assert len(run.feedback) < 3000


def assert_unserved(run, error_code, fragment):
    """The goal was accepted and ended ABORTED at once with error_code and the reason."""
    assert run.wait_accepted()
    result = run.wait_result()
    assert run.status == GoalStatus.STATUS_ABORTED, run.status
    assert (result.error_code, result.done_reason) == (error_code, Chat.Result.DONE_ERROR)
    assert fragment in result.error_message, result.error_message
    assert not result.text and not run.feedback


def test_goals_end_not_serving_while_not_active_with_the_reason(start_llm):
    llm = start_llm()
    assert_unserved(llm.client.send_chat(Chat.Goal(prompt='hi')), Chat.Result.NOT_SERVING,
                    'the node is not active (state: unconfigured)')
    assert 'not active (state: unconfigured)' in llm.client.wait_log('chat goal rejected')
    assert llm.client.change_state('configure')
    assert_unserved(llm.client.send_chat(Chat.Goal(prompt='hi')), Chat.Result.NOT_SERVING,
                    'the node is not active (state: inactive)')
    assert 'NOT_SERVING' in llm.client.wait_log('not active (state: inactive)')


# The goal checks themselves are unit tests (test_chat_logic); this one follows a refusal
# through the node: the max_prompt_chars parameter, the result, the log, the node still serving.
@pytest.mark.parametrize('fields, reason', [
    ({'prompt': 'x' * 2000}, 'max_prompt_chars'),
])
def test_bad_goals_end_invalid_with_their_reason(active, fields, reason):
    llm = active(max_prompt_chars=1000)
    assert_unserved(llm.client.send_chat(Chat.Goal(**fields)), Chat.Result.INVALID_GOAL, reason)
    assert reason in llm.client.wait_log('chat goal rejected')
    assert llm.client.chat('still serving').result.text == 'user: still serving\n'


def test_a_huge_non_ascii_prompt_is_served_whole(active):
    llm = active(max_prompt_chars=2_000_000)
    prompt = ('héllo wörld ✓ 漢字 \u202e ' * 50000)[:1_000_000]
    run = llm.client.chat(prompt, max_tokens=8192)
    # 1 MB is far beyond the 4096-token context: Ollama truncates; the chat still ends well.
    assert run.status == GoalStatus.STATUS_SUCCEEDED
    assert run.result.done_reason in ('stop', 'length') and run.result.stats.prompt_tokens > 0
    assert llm.client.chat('next').result.text == 'user: next\n'


def test_cancel_stops_the_model_and_keeps_the_partial_text(active):
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    run = llm.client.send_chat(Chat.Goal(prompt='go', max_tokens=8192))
    assert run.wait_accepted()
    wait_for(lambda: len(run.feedback) >= 5, 'a few tokens')
    run.cancel()
    result = run.wait_result()
    assert run.status == GoalStatus.STATUS_CANCELED
    assert result.done_reason == 'canceled' and result.error_message == 'canceled by the client'
    assert result.error_code == Chat.Result.CANCELED
    assert result.text.startswith('tok0 tok1 tok2 tok3 tok4 ')
    stats = httpx.get(llm.base_url + '/emulator/stats').json()
    assert len(stats['disconnects']) == 1 and stats['generating'] == 0


@pytest.mark.parametrize('policy, served', [('reject', 1), ('queue', 1 + 8), ('preempt', 20)])
def test_concurrency_policy_under_20_simultaneous_goals(active, policy, served):
    llm = active(model='endless:latest', concurrency=policy, max_queued_goals=8,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '200'})
    # The first goal streams until it is canceled, so the other 19 all arrive while it runs.
    first = llm.client.send_chat(Chat.Goal(prompt='first', max_tokens=8192))
    assert first.wait_accepted()
    wait_for(lambda: first.feedback, 'the first goal to stream')
    # With preempt a goal ends when a newer one arrives, so none may be short enough to finish
    # before the next arrives (on a loaded machine 5 tokens could): they stream until preempted,
    # and the newest is canceled once the others have ended.
    max_tokens = 8192 if policy == 'preempt' else 5
    others = [llm.client.send_chat(Chat.Goal(prompt=f'goal {i}', max_tokens=max_tokens))
              for i in range(19)]
    assert all(run.wait_accepted() for run in others)
    # Goals without room end at once, while the first still streams.
    ended = llm.client.on_executor(lambda: [run.handle.get_result_async() for run in others])
    wait_for(lambda: sum(f.done() for f in ended) >= 20 - served, 'the goals without room')
    if policy == 'preempt':
        wait_for(lambda: sum(f.done() for f in ended) == 18, 'all but the newest preempted')
        (survivor,) = [run for run, future in zip(others, ended) if not future.done()]
        survivor.cancel()
    else:
        first.cancel()
    first_result = first.wait_result(120)
    for run in others:
        run.wait_result(120)
    refused = [run for run in others if run.result.error_code == Chat.Result.QUEUE_FULL]
    assert len(refused) == 20 - served
    assert all(run.status == GoalStatus.STATUS_ABORTED and run.result.done_reason == 'error'
               for run in refused)
    admitted = [run for run in others if run not in refused]
    results = [run.wait_result(120) for run in admitted]
    statuses = [run.status for run in admitted]
    if policy == 'preempt':
        # Each newer goal preempts the oldest one still running or waiting: one survives.
        assert first.status == GoalStatus.STATUS_ABORTED
        assert first_result.error_message == 'preempted by a newer goal'
        assert first_result.error_code == Chat.Result.PREEMPTED
        assert first_result.done_reason == Chat.Result.DONE_CANCELED
        assert survivor is others[-1] and survivor.status == GoalStatus.STATUS_CANCELED
        assert all((r.error_code, r.error_message) == (Chat.Result.PREEMPTED, 'preempted by a '
                                                       'newer goal')
                   for run, r in zip(admitted, results) if run is not survivor)
    else:
        assert first.status == GoalStatus.STATUS_CANCELED
        assert statuses == [GoalStatus.STATUS_SUCCEEDED] * (served - 1)
        assert all(r.text == 'tok0 tok1 tok2 tok3 tok4 ' for r in results)
        assert all(r.error_code == Chat.Result.NONE for r in results)
    assert llm.client.chat('after', max_tokens=3).status == GoalStatus.STATUS_SUCCEEDED


def stream_first(llm):
    """A goal that streams until it is canceled: the slot (num_parallel 1) stays busy."""
    first = llm.client.send_chat(Chat.Goal(prompt='first', max_tokens=8192))
    assert first.wait_accepted()
    wait_for(lambda: first.feedback, 'the first goal to stream')
    return first


def queue_behind(llm, client, count):
    """Goals sent one after the other, each accepted (and queued) before the next is sent."""
    runs = []
    for index in range(count):
        runs.append(client.send_chat(Chat.Goal(prompt=f'queued {index}', max_tokens=3)))
        assert runs[-1].wait_accepted()
    wait_for(lambda: model_values(llm)['goals queued'] == str(count),
             f'{count} goals in the queue')
    return runs


def model_values(llm):
    return {v.key: v.value for v in llm.client.fresh_statuses(what='diagnostics')[
        'llm: Model'].values}


def test_queued_goals_run_one_at_a_time_in_arrival_order(active):
    llm = active(model='endless:latest', concurrency='queue', max_queued_goals=4,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    first = stream_first(llm)
    queued = queue_behind(llm, llm.client, 4)
    assert not any(run.feedback for run in queued)      # none starts while the slot is busy
    first.cancel()
    for run in queued:
        assert run.wait_result().error_code == Chat.Result.NONE
        assert run.status == GoalStatus.STATUS_SUCCEEDED
    started = [run.first_feedback_at for run in queued]
    assert started == sorted(started)


def test_a_goal_canceled_while_queued_ends_at_once_and_the_queue_moves_on(active):
    llm = active(model='endless:latest', concurrency='queue', max_queued_goals=2,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    first = stream_first(llm)
    canceled, after = queue_behind(llm, llm.client, 2)
    canceled.cancel()
    result = canceled.wait_result()
    assert canceled.status == GoalStatus.STATUS_CANCELED
    assert (result.error_code, result.done_reason, result.error_message) == (
        Chat.Result.CANCELED, Chat.Result.DONE_CANCELED, 'canceled by the client')
    # It ended while the first still streamed.
    assert httpx.get(llm.base_url + '/emulator/stats').json()['generating'] == 1
    # Its place is free: a new goal can queue (max_queued_goals 2).
    third = llm.client.send_chat(Chat.Goal(prompt='third', max_tokens=3))
    assert third.wait_accepted()
    first.cancel()
    assert after.wait_result().error_code == Chat.Result.NONE
    assert third.wait_result().error_code == Chat.Result.NONE
    stats = httpx.get(llm.base_url + '/emulator/stats').json()
    assert len(stats['disconnects']) == 1       # the canceled goal never reached Ollama


def test_a_client_that_vanishes_while_its_goal_is_queued_does_not_block_the_queue(
        active, domain_id):
    llm = active(model='endless:latest', concurrency='queue', max_queued_goals=2,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    first = stream_first(llm)
    vanishing = RosClient(domain_id)
    queue_behind(llm, vanishing, 1)
    vanishing.close()
    behind = llm.client.send_chat(Chat.Goal(prompt='behind', max_tokens=3))
    assert behind.wait_accepted()
    first.cancel()
    assert behind.wait_result().error_code == Chat.Result.NONE
    wait_for(lambda: model_values(llm)['goals running'] == '0', 'no goal running')


def test_a_silent_stream_ends_the_goal_with_timeout(active):
    llm = active(model='endless:latest', stream_timeout=1.0,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '0.1'})    # one token per 10 s
    run = llm.client.chat('go', max_tokens=5)
    assert run.status == GoalStatus.STATUS_ABORTED
    assert (run.result.error_code, run.result.done_reason) == (
        Chat.Result.TIMEOUT, Chat.Result.DONE_ERROR)
    assert '(stream_timeout)' in run.result.error_message
    assert 'TIMEOUT' in llm.client.wait_log('chat aborted')


def test_sessions_remember_and_reset(active):
    llm = active()
    first = llm.client.chat('my name is Ada', session_id='s1', system_prompt='be kind')
    assert first.result.session_turns == 1
    second = llm.client.chat('what is my name', session_id='s1').result
    assert second.text == ('system: be kind\nuser: my name is Ada\nassistant: system: be kind\n'
                           'user: my name is Ada\n\nuser: what is my name\n')
    assert second.session_turns == 2
    other = llm.client.chat('hello', session_id='s2').result
    assert other.text == 'user: hello\n'
    reset = llm.client.chat('again', session_id='s1', reset_session=True).result
    assert reset.text == 'user: again\n' and reset.session_turns == 1


def test_caller_context_for_single_turns(active):
    llm = active()
    context = [ChatMessage(role='user', content='earlier'),
               ChatMessage(role='assistant', content='noted')]
    result = llm.client.chat('now', context=context).result
    assert result.text == 'user: earlier\nassistant: noted\nuser: now\n'


def test_thinking_is_separated(active):
    llm = active(model='thinker:latest')
    run = llm.client.chat('why', think=Chat.Goal.THINK_ON)
    assert run.result.thinking == 'Thinking about: why'
    assert run.result.text == 'Answer: why'
    assert_contiguous(run)
    plain = llm.client.chat('why', think=Chat.Goal.THINK_OFF).result
    assert (plain.thinking, plain.text) == ('', 'Answer: why')


def test_a_server_crash_mid_stream_aborts_the_goal_with_the_cause(active):
    llm = active(restart_on_failure=False, env={'OLLAMA_EMULATOR_SERVER_CRASH_AFTER': '3'})
    run = llm.client.chat('one two three four five six')
    assert run.status == GoalStatus.STATUS_ABORTED
    assert run.result.done_reason == 'error'
    assert run.result.error_code == Chat.Result.SERVER_FAILED
    assert 'closed the connection' in run.result.error_message or \
        'exited with code' in run.result.error_message


def test_deactivate_aborts_running_chats(active):
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    run = llm.client.send_chat(Chat.Goal(prompt='go', max_tokens=8192))
    assert run.wait_accepted()
    wait_for(lambda: run.feedback, 'streaming to start')
    assert llm.client.change_state('deactivate')
    result = run.wait_result()
    assert run.status == GoalStatus.STATUS_ABORTED
    assert result.error_message == 'the node is deactivating'
    assert result.error_code == Chat.Result.NOT_SERVING


@pytest.mark.real_model
def test_real_model_end_to_end(active):
    llm = active(model='smollm2:135m', num_thread=2)
    run = llm.client.chat('What is the capital of France?', temperature=0.0, max_tokens=40)
    assert run.status == GoalStatus.STATUS_SUCCEEDED
    assert 'Paris' in run.result.text
    assert_contiguous(run)
    assert run.result.stats.completion_tokens > 0


def cli(domain_id, *arguments, **kwargs):
    return subprocess.Popen([str(install_prefix() / 'lib' / 's100_llm' / 'chat'), *arguments],
                            env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_chat_cli_streams_and_prints_stats(active, domain_id):
    active()
    done = cli(domain_id, 'hello robot')
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert out == 'user: hello robot\n'
    assert '[stop] 4 tokens' in err


def test_chat_cli_ctrl_c_cancels(active, domain_id):
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    running = cli(domain_id, 'go', '--max-tokens', '8192')
    wait_for(lambda: httpx.get(llm.base_url + '/emulator/stats').json()['generating'],
             'the CLI chat to stream')
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=60)
    assert '[canceled]' in err and running.returncode == 1
    wait_for(lambda: httpx.get(llm.base_url + '/emulator/stats').json()['disconnects'],
             'the server to see the cancel')


def test_chat_cli_interactive_session(active, domain_id):
    active()
    session = cli(domain_id, stdin=subprocess.PIPE)
    out, err = session.communicate('first\nsecond\n\n', timeout=60)
    assert session.returncode == 0, err
    assert 'user: first\nassistant: user: first' in out
