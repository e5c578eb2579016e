"""robots.txt, fetched with the crawler's own session and parsed by ``urllib.robotparser``.

Per origin, once per run:
- 2xx: the rules apply (``Crawl-delay`` too);
- 401/403: everything disallowed (as the standard library does);
- other 4xx (no robots.txt): everything allowed;
- 5xx, timeouts, unreachable: everything disallowed (``robots_unreachable``);
- a robots.txt the address policy refuses: the site is refused for that same reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from .safety import ADDRESS_REASONS, Refused

LOG = logging.getLogger(__name__)


@dataclass
class _Rules:
    parser: RobotFileParser | None = None
    refusal: Refused | None = None
    delay: float | None = None


class RobotsCache:
    """Answers "may I fetch this URL?" per origin; ``fetch(origin) -> (status, text)``."""

    def __init__(self, fetch: Callable[[str], tuple[int, str]], agent: str) -> None:
        self._fetch = fetch
        self.agent = agent
        self._rules: dict[str, _Rules] = {}

    def check(self, url: str) -> None:
        """Raise ``Refused`` (``robots``, ``robots_unreachable``, ...) unless ``url`` is allowed."""
        rules = self._rules_for(url)
        if rules.refusal is not None:
            raise Refused(rules.refusal.reason, url, rules.refusal.detail)
        if not rules.parser.can_fetch(self.agent, url):
            raise Refused("robots", url, f"disallowed by {origin(url)}/robots.txt")

    def allowed(self, url: str) -> bool:
        try:
            self.check(url)
        except Refused:
            return False
        return True

    def crawl_delay(self, url: str) -> float | None:
        """The origin's Crawl-delay for our agent, if it gives one."""
        rules = self._rules_for(url)
        if rules.parser is None:
            return None
        return rules.delay

    def _rules_for(self, url: str) -> _Rules:
        key = origin(url)
        if key not in self._rules:
            self._rules[key] = self._load(key)
        return self._rules[key]

    def _load(self, key: str) -> _Rules:
        try:
            status, text = self._fetch(key)
        except Refused as exc:
            if exc.reason in ADDRESS_REASONS or exc.reason in ("tls", "proxy"):
                # the site itself would get the same answer: say so, not "robots"
                return _Rules(refusal=exc)
            LOG.warning("%s/robots.txt unreachable (%s): not crawling that site", key, exc.reason)
            return _Rules(refusal=Refused("robots_unreachable", key, f"robots.txt: {exc}"))
        parser = RobotFileParser(key + "/robots.txt")
        if status in (401, 403):
            parser.disallow_all = True
        elif status >= 400:
            parser.allow_all = True
        else:
            parser.parse(text.splitlines())
        LOG.debug("%s/robots.txt: status %d, %d rule groups", key, status, len(parser.entries))
        delay = parse_crawl_delay(text, self.agent) if status < 400 else None
        return _Rules(parser=parser, delay=delay)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.rsplit('@', 1)[-1].lower()}"


def parse_crawl_delay(text: str, agent: str) -> float | None:
    """The Crawl-delay of the group for ``agent`` (else ``*``), decimals allowed.

    ``RobotFileParser.crawl_delay`` reads whole seconds only and drops "0.5".
    """
    delays: dict[str, float] = {}
    group: list[str] = []
    in_agents = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        field, value = (part.strip() for part in line.split(":", 1))
        field = field.lower()
        if field == "user-agent":
            group = (group if in_agents else []) + [value.lower()]
            in_agents = True
            continue
        in_agents = False
        if field == "crawl-delay":
            try:
                seconds = float(value)
            except ValueError:
                continue
            for name in group:
                delays.setdefault(name, seconds)
    agent = agent.lower()
    for name, seconds in delays.items():
        if name != "*" and name in agent:
            return seconds
    return delays.get("*")
