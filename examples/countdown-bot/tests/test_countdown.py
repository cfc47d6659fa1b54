from bots.testing import FakeLobby, check_plugin
from countdown_bot import CountdownBot


def test_it_is_a_plugin_a_provider_can_offer() -> None:
    check_plugin(CountdownBot, "countdown")


async def test_it_counts_down() -> None:
    lobby = FakeLobby()
    await lobby.start(CountdownBot(lobby, CountdownBot.Config.parse({"start": 3, "interval": 0})))
    await lobby.say("Ann", "!countdown")
    assert lobby.chat == ["3", "2", "1", "Liftoff!"]
