"""Conformance of images on chat messages and of /api/embed, as Ollama answers them."""

import base64
import io
import math

import httpx
import ollama
from PIL import Image
import pytest

from emulator_fixtures import runners_of


def png(width: int, height: int, colour: tuple) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', (width, height), colour).save(buffer, format='PNG')
    return buffer.getvalue()


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b))


@pytest.fixture
def seeing(emulator):
    emulator.pull('seer', 'embedder')
    return emulator


def test_a_vision_model_describes_the_decoded_images(seeing):
    red, blue = png(64, 48, (230, 20, 20)), png(8, 8, (10, 10, 240))
    plain = seeing.client.chat('seer', [{'role': 'user', 'content': 'what is there?'}])
    reply = seeing.client.chat('seer', [{'role': 'user', 'content': 'what is there?',
                                         'images': [red, blue]}])
    assert reply.message.content == 'I see 2 images: 1) 64x48, mostly red; 2) 8x8, mostly blue'
    # Each image costs prompt tokens, like a real vision model's image patches.
    assert reply.prompt_eval_count == plain.prompt_eval_count + 2 * 256


def test_an_image_that_does_not_decode_fails_like_a_real_model(seeing):
    reply = httpx.post(seeing.url + '/api/chat', json={'model': 'seer', 'messages': [
        {'role': 'user', 'content': 'x', 'images': [base64.b64encode(b'not an image').decode()]}]})
    assert (reply.status_code, reply.json()) == (
        500, {'error': 'failed to process inputs: image: unknown format'})


def test_images_sent_to_a_model_without_vision_are_ignored(seeing):
    reply = seeing.client.chat('echo', [{'role': 'user', 'content': 'hi',
                                         'images': [png(4, 4, (0, 0, 0))]}])
    assert reply.message.content == 'user: hi\n'


def test_embeddings_are_unit_vectors_ranked_by_shared_words(seeing):
    texts = ['the kitchen door is open', 'the kitchen door', 'battery is low']
    reply = seeing.client.embed('embedder', texts)
    vectors = reply.embeddings
    assert len(vectors) == 3 and all(math.isclose(cosine(v, v), 1.0) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert reply.prompt_eval_count == sum(len(text.split()) for text in texts)
    assert len(runners_of(seeing)) == 1


def test_embed_input_forms_dimensions_and_errors(seeing):
    one = seeing.client.embed('embedder', 'hello world', dimensions=8).embeddings
    assert len(one) == 1 and len(one[0]) == 8 and math.isclose(cosine(one[0], one[0]), 1.0)
    empty = httpx.post(seeing.url + '/api/embed', json={'model': 'embedder', 'input': []})
    assert empty.json() == {'model': 'embedder', 'embeddings': []}
    for body, status, message in [
            ({'model': 'embedder', 'input': 5}, 400, 'invalid input type'),
            ({'model': 'embedder', 'input': 'word ' * 600, 'truncate': False}, 400,
             'the input length exceeds the context length')]:
        reply = httpx.post(seeing.url + '/api/embed', json=body)
        assert (reply.status_code, reply.json()) == (status, {'error': message})
    long = seeing.client.embed('embedder', 'word ' * 600)
    assert long.prompt_eval_count == 512


def test_an_embedding_model_does_not_chat(seeing):
    with pytest.raises(ollama.ResponseError) as error:
        seeing.client.chat('embedder', [{'role': 'user', 'content': 'x'}])
    assert (error.value.status_code, error.value.error) == (
        400, '"embedder" does not support chat')
    assert 'embedding' in seeing.client.show('embedder').capabilities
