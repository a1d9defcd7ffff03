"""The real model: SmolLM2-135M-Instruct served by llama.cpp behind the emulator."""

import time

from emulator_fixtures import wait

QUESTION = [{'role': 'user', 'content': 'What is the capital of France?'}]


def test_smollm2_answers_in_english_with_real_counts(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2')
    emulator.pull('smollm2:135m')
    parts = list(emulator.client.chat('smollm2:135m', QUESTION, stream=True,
                                      options={'temperature': 0, 'num_predict': 40}))
    answer = ''.join(p.message.content for p in parts)
    assert 'Paris' in answer
    final = parts[-1]
    assert final.done and final.eval_count > 0 and final.prompt_eval_count > 5
    assert final.eval_duration > 0 and final.prompt_eval_duration > 0


def test_closing_a_real_stream_stops_llama_cpp(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2')
    emulator.pull('smollm2:135m')
    stream = emulator.client.chat('smollm2:135m', QUESTION + [
        {'role': 'user', 'content': 'Now write a very long essay about Paris.'}],
        stream=True, options={'num_predict': 2000})
    for _, _ in zip(range(5), stream):
        pass
    closed_at = time.monotonic()
    stream.close()
    wait(lambda: emulator.stats()['disconnects'], 'the server to see the disconnect')
    # One slot: a new answer is only possible once llama.cpp stopped the 2000-token one.
    reply = emulator.client.chat('smollm2:135m', QUESTION,
                                 options={'temperature': 0, 'num_predict': 8})
    assert reply.done and time.monotonic() > closed_at
