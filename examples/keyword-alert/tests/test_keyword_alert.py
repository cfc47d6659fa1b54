from bots.testing import FakeLobby, check_plugin
from keyword_alert import KeywordAlertBot


def test_it_is_a_plugin_a_provider_can_offer() -> None:
    check_plugin(KeywordAlertBot, "keyword_alert")


async def test_once_per_sentence_even_when_the_sentence_is_revised() -> None:
    lobby = FakeLobby()
    await lobby.start(KeywordAlertBot(lobby, KeywordAlertBot.Config.parse(
        {"keywords": ["banana", "kiwi"]})))
    early = await lobby.caption("Ann", "I ate a banana")
    await lobby.caption("Ann", "I ate a banana and a kiwi", replaces=[early])
    await lobby.caption("Bob", "Bananas are yellow.")  # another word, not the keyword
    # revised away and back: still the one sentence
    first = await lobby.caption("Cy", "I ate a banana")
    second = await lobby.caption("Cy", "I ate a bandana", replaces=[first])
    await lobby.caption("Cy", "I ate a banana for lunch.", replaces=[second])
    first = await lobby.caption("Bob", "One more banana.")
    # the next sentence came so soon that the transcriber joined it to the first
    joined = await lobby.caption("Bob", "One more banana. It was ripe.", replaces=[first])
    two = await lobby.caption("Bob", "And a kiwi.")
    await lobby.caption("Bob", "One more banana. It was ripe. And a kiwi.", replaces=[joined, two])
    assert lobby.chat == ["Ann said banana", "Ann said kiwi", "Cy said banana", "Bob said banana",
                          "Bob said kiwi"]
