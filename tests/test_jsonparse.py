from __future__ import annotations

import pytest

from persona_forge.jsonparse import JsonParseError, parse_json


@pytest.mark.parametrize("text,expected", [
    ('{"a": 1}', {"a": 1}),
    ('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}),
    ('The answer is {"label": "neutral", "confidence": 0.7} as asked.', {"label": "neutral", "confidence": 0.7}),
    ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),
    ("{'a': 'don\\'t', 'b': True}", {"a": "don't", "b": True}),
    ('["x", "y"]', ["x", "y"]),
    ('I don\'t know, maybe {"q": "What\'s up?"}', {"q": "What's up?"}),
])
def test_tolerant_parsing(text, expected):
    assert parse_json(text) == expected


@pytest.mark.parametrize("text,reason", [
    ("", "empty reply"),
    ("no json here", "no JSON object"),
    ('{"a": [1, 2', "truncated"),
])
def test_unreadable_json_says_why(text, reason):
    with pytest.raises(JsonParseError, match=reason):
        parse_json(text)
