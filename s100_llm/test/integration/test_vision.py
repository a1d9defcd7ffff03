"""Issue 16: images in chat goals and the camera, through the real node with the emulator's
vision model `seer` (it decodes each image and describes its size and dominant colour; 256
prompt tokens per image)."""

import io

from action_msgs.msg import GoalStatus
from PIL import Image as PilImage
import pytest
from s100_llm_msgs.action import Chat
from s100_llm_msgs.srv import ListSessions
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image

from harness import assert_aborted
from harness import run_installed
from harness import wait_for

IMAGE_TOKENS = 256
RED, BLUE = (220, 30, 30), (30, 30, 220)


def raw(colour, width, height, encoding='rgb8', padding=0):
    """A sensor_msgs/Image of one colour (rgb8 or bgr8), rows padded by `padding` bytes."""
    pixel = bytes(colour if encoding == 'rgb8' else colour[::-1])
    row = pixel * width + b'\0' * padding
    return Image(width=width, height=height, encoding=encoding, step=width * 3 + padding,
                 data=row * height)


def encoded(colour, width, height, kind):
    out = io.BytesIO()
    PilImage.new('RGB', (width, height), colour).save(out, kind)
    return out.getvalue()


def compressed(colour, width, height, kind='PNG'):
    return CompressedImage(format=kind.lower(), data=encoded(colour, width, height, kind))


def succeeded(run):
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    return run.result


def test_raw_and_compressed_images_reach_the_model_downscaled(active):
    llm = active(model='seer:latest', image_max_side=64)
    # Without images: the prompt's own tokens, to compare with.
    bare = succeeded(llm.client.chat('what do you see?'))
    assert bare.text == 'I see no image. what do you see?'
    result = succeeded(llm.client.chat(
        'what do you see?',
        images=[raw(RED, 320, 240, padding=8), raw(RED, 40, 30, 'bgr8')],
        compressed_images=[compressed(BLUE, 100, 200, 'PNG'), compressed(RED, 640, 480, 'JPEG')]))
    # Downscaled to a longest side of 64 (aspect kept), the small one as it was; bgr8 is not
    # read as rgb8 (red stays red).
    assert result.text == ('I see 4 images: 1) 64x48, mostly red; 2) 40x30, mostly red; '
                           '3) 32x64, mostly blue; 4) 64x48, mostly red')
    assert result.stats.prompt_tokens == bare.stats.prompt_tokens + 4 * IMAGE_TOKENS


def test_a_model_without_vision_refuses_images(active):
    llm = active()     # echo:latest: completion only
    run = llm.client.send_chat(Chat.Goal(prompt='look', images=[raw(RED, 4, 4)]))
    assert_aborted(run, Chat.Result.INVALID_GOAL,
                   "model 'echo:latest' cannot see images (capabilities: completion)")
    camera = llm.client.send_chat(Chat.Goal(prompt='look', use_camera=True))
    assert_aborted(camera, Chat.Result.INVALID_GOAL, 'cannot see images')
    assert 'cannot see images' in llm.client.wait_log('chat goal rejected')


# Each image check is a unit test (test_images); these follow the limits set as parameters
# through the node to a refusal.
@pytest.mark.parametrize('goal, reason', [
    (Chat.Goal(prompt='x', images=[raw(RED, 2, 2)] * 3),
     'the goal has 3 images (camera included); the limit (max_images) is 2'),
    (Chat.Goal(prompt='x', images=[raw(RED, 40, 30)]),
     'images[0] has 3600 bytes; the limit (max_image_bytes) is 2048'),
])
def test_unusable_images_end_invalid_goal_naming_the_image(active, goal, reason):
    llm = active(model='seer:latest', max_images=2, max_image_bytes=2048)
    assert_aborted(llm.client.send_chat(goal), Chat.Result.INVALID_GOAL, reason)


def test_an_image_that_does_not_decode_ends_invalid_goal_when_it_runs(active):
    llm = active(model='seer:latest', image_max_side=16)
    broken = encoded(RED, 64, 64, 'PNG')[:60]     # the header, cut inside the pixels
    run = llm.client.send_chat(Chat.Goal(prompt='x', compressed_images=[
        CompressedImage(format='png', data=broken)]))
    assert_aborted(run, Chat.Result.INVALID_GOAL, 'compressed_images[0] does not decode as PNG')
    assert 'INVALID_GOAL' in llm.client.wait_log('chat aborted')
    # The node goes on serving.
    assert succeeded(llm.client.chat('x', images=[raw(RED, 8, 8)])).text.startswith('I see 1')


def test_a_session_keeps_a_note_not_the_image(active):
    llm = active(model='seer:latest')
    first = succeeded(llm.client.chat('what colour is this?', session_id='eyes',
                                      images=[raw(RED, 8, 8)]))
    assert first.text == 'I see 1 image: 1) 8x8, mostly red'
    second = succeeded(llm.client.chat('and now?', session_id='eyes'))
    # The model got no image on the second turn (it would describe it) ...
    assert second.text == 'I see no image. and now?'
    # ... and it got the first turn with the note in place of the image: the emulator counts
    # 3 tokens per message and one per word (an image would add 256).
    sent = ['what colour is this? [1 image was shown]', first.text, 'and now?']
    assert second.stats.prompt_tokens == sum(3 + len(text.split()) for text in sent)
    assert second.session_turns == 2
    # The first turn's count held its image's 256 tokens, which the stored note does not.
    (info,) = llm.client._call(ListSessions, '/llm/list_sessions',
                               ListSessions.Request()).sessions
    assert 0 < info.context_tokens < IMAGE_TOKENS


def camera_publisher(llm, topic, message_type):
    publisher = llm.client.node.create_publisher(message_type, topic, 1)
    wait_for(lambda: publisher.get_subscription_count() > 0, f'the node to subscribe {topic}')
    return publisher


def publish_until_seen(llm, publisher, frame):
    """Publish frame until a use_camera goal no longer ends 'no frame received yet' (a best
    effort frame sent while DDS still matches the reader may be lost); returns the result."""
    def attempt():
        publisher.publish(frame)
        run = llm.client.chat('what do you see?', use_camera=True)
        return None if 'no frame received yet' in run.result.error_message else run
    return wait_for(attempt, 'a camera frame to reach the node')


@pytest.mark.parametrize('topic, frame, expected', [
    ('/camera/image_raw', raw(BLUE, 160, 120, 'bgr8'), 'I see 1 image: 1) 64x48, mostly blue'),
    ('/camera/image_raw/compressed', compressed(RED, 32, 48, 'JPEG'),
     'I see 1 image: 1) 32x48, mostly red'),
])
def test_use_camera_sees_the_latest_frame(active, topic, frame, expected):
    llm = active(model='seer:latest', camera_topic=topic, image_max_side=64)
    # Before any frame: NO_IMAGE, naming the topic.
    early = llm.client.send_chat(Chat.Goal(prompt='look', use_camera=True))
    assert_aborted(early, Chat.Result.NO_IMAGE, f'no frame received yet on {topic}')
    publisher = camera_publisher(llm, topic, type(frame))
    run = publish_until_seen(llm, publisher, frame)
    assert succeeded(run).text == expected
    # The camera frame comes after the goal's own images.
    both = succeeded(llm.client.chat('look', use_camera=True, images=[raw(RED, 8, 8)]))
    assert both.text == f"I see 2 images: 1) 8x8, mostly red; 2) {expected.split('1) ')[1]}"
    assert both.stats.prompt_tokens >= 2 * IMAGE_TOKENS


def test_a_stale_camera_frame_ends_no_image(active):
    llm = active(model='seer:latest', camera_topic='/camera/image_raw', camera_max_age=0.5)
    publisher = camera_publisher(llm, '/camera/image_raw', Image)
    publish_until_seen(llm, publisher, raw(RED, 8, 8))
    # No new frame: once the last one is older than camera_max_age, goals end NO_IMAGE.

    def stale():
        run = llm.client.chat('look', use_camera=True)
        return run.result.error_code == Chat.Result.NO_IMAGE and run
    run = wait_for(stale, 'the frame to be too old')
    assert run.status == GoalStatus.STATUS_ABORTED
    assert 'the latest frame on /camera/image_raw is ' in run.result.error_message
    assert run.result.error_message.endswith('s old; camera_max_age is 0.5')
    assert 'NO_IMAGE' in llm.client.wait_log('chat goal rejected: use_camera')


def test_a_camera_frame_the_node_cannot_use_ends_no_image(active):
    llm = active(model='seer:latest', camera_topic='/camera/image_raw')
    publisher = camera_publisher(llm, '/camera/image_raw', Image)
    yuyv = Image(width=4, height=2, encoding='yuv422', step=8, data=bytes(16))
    run = publish_until_seen(llm, publisher, yuyv)
    assert run.result.error_code == Chat.Result.NO_IMAGE, run.result.error_message
    assert run.result.error_message.startswith(
        "the camera frame from /camera/image_raw has encoding 'yuv422'; supported: rgb8")


def test_no_camera_topic_ends_no_image(active):
    llm = active(model='seer:latest')
    run = llm.client.send_chat(Chat.Goal(prompt='look', use_camera=True))
    assert_aborted(run, Chat.Result.NO_IMAGE,
                   'the node has no camera (its camera_topic parameter is empty)')


def test_deactivate_unsubscribes_the_camera(active):
    llm = active(model='seer:latest', camera_topic='/camera/image_raw')
    publisher = camera_publisher(llm, '/camera/image_raw', Image)
    assert llm.client.change_state('deactivate')
    wait_for(lambda: publisher.get_subscription_count() == 0, 'the node to unsubscribe')


def test_chat_cli_image_and_camera(active, domain_id, tmp_path):
    active(model='seer:latest', camera_topic='/camera/image_raw', image_max_side=64)
    picture = tmp_path / 'door.jpg'
    picture.write_bytes(encoded(BLUE, 200, 100, 'JPEG'))
    code, out, err = run_installed(domain_id, 'chat', '--image', str(picture), '--image',
                                   str(picture), 'is the door open?')
    assert code == 0, err
    assert out == 'I see 2 images: 1) 64x32, mostly blue; 2) 64x32, mostly blue'
    assert f'prompt {2 * IMAGE_TOKENS + 7} tokens' in err
    # A file that is neither JPEG nor PNG is refused by the CLI before anything is sent.
    text = tmp_path / 'notes.txt'
    text.write_text('not a picture')
    code, out, err = run_installed(domain_id, 'chat', '--image', str(text), 'look')
    assert code == 2 and f'--image: {text} is neither a JPEG nor a PNG file' in err
    # --camera: no frame yet on the node's camera topic.
    code, out, err = run_installed(domain_id, 'chat', '--camera', 'look')
    assert code == 1 and 'NO_IMAGE: use_camera: no frame received yet on /camera/image_raw' in err
