import base64
import json

import pytest

from operators import conversation as conv
from operators.conversation import ConversationError, audio_item


def test_dataflow_row_without_markers_puts_the_audio_first():
    """As DataFlow-MM's generator does for its guide's rows."""
    msgs = conv.from_dataflow([{"from": "human", "value": "Transcribe the audio into Chinese."}], ["a.wav"])
    assert msgs == [{"role": "user", "content": [audio_item(0), {"type": "text",
                                                                  "text": "Transcribe the audio into Chinese."}]}]


def test_dataflow_markers_place_each_audio_in_order():
    msgs = conv.from_dataflow([{"from": "human", "value": "First: <audio> Second: <audio>\nWhich is higher?"}],
                              ["a.wav", "b.wav"])
    assert msgs[0]["content"] == [{"type": "text", "text": "First:"}, audio_item(0),
                                  {"type": "text", "text": "Second:"}, audio_item(1),
                                  {"type": "text", "text": "Which is higher?"}]


def test_dataflow_multi_turn_keeps_earlier_answers_as_context():
    msgs = conv.from_dataflow([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<audio>Hi?"},
                               {"from": "gpt", "value": "A tone."}, {"from": "human", "value": "High or low?"}],
                              ["a.wav"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"] == "A tone."
    assert msgs[3]["content"] == [{"type": "text", "text": "High or low?"}]


@pytest.mark.parametrize("turns, audio, why", [
    ([{"from": "human", "value": "<audio><audio>x"}], ["a.wav"], "2 <audio> markers but 1 audio"),
    ([{"from": "robot", "value": "x"}], ["a.wav"], "'from'"),
    ([], ["a.wav"], "non-empty list"),
    ([{"from": "human", "value": 3}], ["a.wav"], "must be a string"),
])
def test_dataflow_errors_say_what_is_wrong(turns, audio, why):
    with pytest.raises(ConversationError, match=why):
        conv.from_dataflow(turns, audio)


def test_openai_messages_every_way_of_naming_audio():
    data = base64.b64encode(b"RIFFxxxx").decode()
    msgs, refs = conv.from_messages([
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "audio", "path": "b.flac"},
                                     {"type": "audio_url", "audio_url": {"url": "s3://x/c.mp3"}},
                                     {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                                     {"type": "text", "text": "Compare them."}]}])
    assert refs == ["a.wav", "b.flac", "s3://x/c.mp3", b"RIFFxxxx"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["content"] == [audio_item(k) for k in range(4)] + [{"type": "text", "text": "Compare them."}]


@pytest.mark.parametrize("messages, why", [
    ([{"role": "user", "content": [{"type": "audio"}]}], "audio item without a path"),
    ([{"role": "user", "content": [{"type": "image", "image": "x.png"}]}], "unsupported content item"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}], "base64"),
    ([{"content": "hi"}], "'role'"),
])
def test_openai_errors_say_what_is_wrong(messages, why):
    with pytest.raises(ConversationError, match=why):
        conv.from_messages(messages)


def test_last_turn_must_be_the_users():
    with pytest.raises(ConversationError, match="nothing to answer"):
        conv.check([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_system_prompt_only_where_the_conversation_has_none():
    user = [{"role": "user", "content": "q"}]
    assert conv.with_system(user, "S")[0] == {"role": "system", "content": "S"}
    own = [{"role": "system", "content": "Mine"}, *user]
    assert conv.with_system(own, "S") == own


def test_messages_survive_json():
    msgs = conv.instruction(2, "Compare.")
    assert json.loads(json.dumps(msgs)) == msgs
