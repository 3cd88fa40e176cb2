"""Pronoun scrubbing for the harmful task: gender identification from biographies with gendered words neutralised.

`scrub` rewrites he/she/him/her/his/hers/himself/herself (any case: he, He, HE; next to punctuation: "her.",
"(his", "he's", "she'd", with straight or curly apostrophes) and the titles Mr./Mrs./Ms./Miss (any case: MRS.,
mr., MISS) to singular they and "Mx.", keeping each word's capitalisation. English needs a few decisions that plain
substitution gets wrong; the approximations made here, all symmetric between he and she unless noted:

- Subject verb agreement is fixed for the common simple cases: "he is/was/has/does" (and their "n't" forms) become
  "they are/were/have/do", and a present-tense verb right after the pronoun loses its third-person "-s" ("she works"
  -> "they work", "he teaches" -> "they teach", "she studies" -> "they study"). One adverb from a short list may sit
  between ("she also works", "he currently is"). Anything else is left ("is he" stays "is they"): the result is
  sometimes ungrammatical, never gendered.
- "he's"/"she's" is ambiguous ("is" or "has"): it becomes "they're", except before "been"/"got" where it becomes
  "they've".
- "her" is a possessive ("her book" -> "their book") or an object ("helped her." -> "helped them."). It becomes
  "their" when the next token looks like the start of a noun phrase (a word that is not a preposition, determiner,
  conjunction, adverb, pronoun or common bare verb; a number; an opening curly quote) and "them" otherwise
  (punctuation, end of text, "to", "and", "the", "with", a word in "-ly", "become", ...). "his" follows the same rule
  with "their"/"theirs" ("the idea was his." -> "theirs."). This heuristic is the one asymmetric step: a wrong
  guess only ever happens to "her" in object position before an adjective ("made her famous" -> "made their
  famous"), so such errors are a faint female cue; they are rare in biographies.
- Reflexives become "themself" (singular they), pairs like "he/she", "s/he", "his or her" collapse to one word.
- Titles in any case: "Mr."/"Mrs."/"Ms." (also "MRS.", "mr.", "MS.") become "Mx." in the same case style ("MX.",
  "mx."); "Mr"/"Mrs"/"Ms" without a period and "Miss" (any case: "MR", "mrs", "MISS") are rewritten only before a
  capitalised word (a name), so "MS in nursing" and "miss a deadline" are left alone. Bare all-caps "MS" is mostly
  the degree ("MS Nursing", "MS Office"), so it is rewritten only before an all-caps word ("MS JANE DOE"). A dotted
  "MS." ending a sentence about the degree becomes "MX." too, and "never miss Sunday mass" becomes "never mx.
  Sunday mass": ungrammatical, never gendered, applied to every bio alike. All-caps pronouns are rewritten too
  ("HE" -> "THEY"), which also catches the rare acronym ("HE" for higher education); harmless, since it is applied
  to every bio alike.

`count_gendered` counts the pronouns and titles that remain. It casts a slightly wider net than `scrub` rewrites:
bare "Mr"/"Mrs"/"Ms" and capitalised "Miss" count wherever they stand (their other cases where `scrub` rewrites
them), so a non-zero count on a scrubbed corpus points at titles the rules deliberately left (not before a name)
or text they did not see. `count_by_gender` splits the same counts into male and female words, used to check which
label value means which gender.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# Part of the data fingerprint: changing any rule here changes every scrubbed corpus, so cached results keyed by
# the fingerprint must not be reused.
SCRUB_VERSION = 2  # 2: titles in every case (MRS., mr., MISS, ...)

_APOS = "'’"

# -- helpers ----------------------------------------------------------------------------------------------------------


def _like(src: str, repl: str) -> str:
    """`repl` in the capitalisation of `src` (HE -> THEY, He -> They, he -> they)."""
    letters = [c for c in src if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return repl.upper()
    if letters and letters[0].isupper():
        return repl[0].upper() + repl[1:]
    return repl


# Words after which "her"/"his" cannot be a possessive determiner: function words, pronouns, adverbs and bare verbs
# that follow an object pronoun ("let her go", "helped her become").
_NOT_NOUN_START = frozenset(
    """
    a an the this that these those some any each every no all both either neither such what which whose who whom
    to and or but nor so yet for at on in into onto upon with without within from by of off about above across after
    against along amid among around as before behind below beneath beside besides between beyond despite down during
    except inside like near out outside over past per since than through throughout till toward towards under
    underneath unlike until up via
    again also already always ever never not now once only just even still too very well here there then when where
    while why how if whether because although though unless however therefore thus hence instead rather quite
    almost enough often sometimes soon later back away together alone apart forward home
    i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
    myself yourself himself herself itself ourselves themselves themself one
    is was are were be been being am has have had do does did will would shall should can could may might must
    become pursue realize realise understand achieve gain earn continue explore develop discover bring make see take
    go get keep feel stay combine create obtain overcome identify succeed thrive excel apply join write teach enter
    receive
    """.split()
)
# Words ending in "-ly" that usually start a noun phrase ("her early work", "his family"); other "-ly" words after
# "her" are adverbs ("helped her greatly").
_LY_NOUN_START = frozenset(
    "family early only elderly friendly lovely daily weekly monthly yearly quarterly holy lonely costly scholarly "
    "orderly ally rally bully italy july supply assembly".split()
)
_THEIR_PUNCT = set("0123456789“‘$#£€")


def _possessive_follows(rest: str) -> bool:
    """Whether the text right after "her"/"his" looks like the start of a noun phrase."""
    m = _NEXT_TOKEN.match(rest)
    if m is None:
        return False  # end of text
    word = m.group("word")
    if word is None:
        return m.group("other") in _THEIR_PUNCT
    low = word.lower()
    if low in _NOT_NOUN_START:
        return False
    if low.endswith("ly") and low not in _LY_NOUN_START:
        return False
    return True


_NEXT_TOKEN = re.compile(r"[ \t]*(?:(?P<word>[^\W\d_][\w'’-]*)|(?P<other>\S))")


# Third-person singular present -> plural ("works" -> "work"). Only applied to a lowercase word right after a
# subject pronoun; None leaves the word as it is.
_NOT_VERB = frozenset(
    "always sometimes perhaps thus nevertheless plus afterwards towards besides whereas nowadays as us this its his "
    "hers yes less unless alas across various previous was is has does".split()
)
_VERB_EXCEPTIONS = {"focuses": "focus", "biases": "bias"}


def _plural_verb(word: str) -> str | None:
    if word in _NOT_VERB or len(word) < 3:
        return None
    if word in _VERB_EXCEPTIONS:
        return _VERB_EXCEPTIONS[word]
    if word.endswith(("ss", "us", "is", "ous")):
        return None
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")):
        return word[:-2]
    return word[:-1]


_IRREGULAR = {
    "is": "are",
    "was": "were",
    "has": "have",
    "does": "do",
    "isn't": "aren't",
    "wasn't": "weren't",
    "hasn't": "haven't",
    "doesn't": "don't",
}

# -- the rules ---------------------------------------------------------------------------------------------------------

_SUBJ = (
    r"(?:\(s\)he|\bs/he|\b(?:he\s*/\s*she|she\s*/\s*he|he\s+or\s+she|she\s+or\s+he|he|she))\b"
)
_ADVERBS = (
    "also|now|currently|still|often|always|regularly|frequently|usually|mainly|primarily|especially|particularly|"
    "actively|actually|truly|really|sometimes|never|only|even|proudly|happily|specifically|typically|generally|"
    "mostly|largely|just|already|further|continually|consistently|passionately"
)
# One pass for all single-word pronouns: the lookahead lets the engine skip most positions with one character test.
_WORD_RULE = re.compile(
    r"(?=[hs(])(?:"
    rf"(?P<subj>{_SUBJ})"
    rf"(?:(?P<apos>[{_APOS}])(?P<contr>s|d|ll)\b(?P<perfect>(?=\s+(?:been|got)\b))?"
    rf"|(?P<adv>\s+(?:{_ADVERBS}))?(?P<sp>\s+)"
    rf"(?P<verb>(?:is|was|has|does)(?:n[{_APOS}]t)?\b|(?-i:[a-z]+s)\b))?"
    r"|(?P<herhis>\b(?:her|his)\b)"
    r"|(?P<simple>\b(?:him|hers|himself|herself)\b)"
    r")",
    re.IGNORECASE,
)
_SIMPLE = {"him": "them", "hers": "theirs", "himself": "themself", "herself": "themself"}


def _word(m: re.Match[str]) -> str:
    if m.group("herhis") is not None:
        return _her_his(m)
    if m.group("simple") is not None:
        word = m.group(0)
        return _like(word, _SIMPLE[word.lower()])
    return _subject(m)


def _subject(m: re.Match[str]) -> str:
    subj = m.group("subj")
    out = _like(subj, "they")
    if m.group("apos"):
        contr = m.group("contr")
        if contr.lower() == "s":
            new = "ve" if m.group("perfect") is not None else "re"
            contr = new.upper() if contr.isupper() else new
        return out + m.group("apos") + contr
    verb = m.group("verb")
    if verb is None:
        return out
    plain = verb.replace("’", "'").lower()
    if plain in _IRREGULAR:
        new = _IRREGULAR[plain]
        if "’" in verb:
            new = new.replace("'", "’")
        new = _like(verb, new)
    else:
        new = _plural_verb(verb) or verb
    return out + (m.group("adv") or "") + m.group("sp") + new


def _her_his(m: re.Match[str]) -> str:
    word = m.group(0)
    possessive = _possessive_follows(m.string[m.end() : m.end() + 40])
    if word.lower() == "her":
        return _like(word, "their" if possessive else "them")
    return _like(word, "their" if possessive else "theirs")


def _pair(a: str, b: str) -> str:
    return rf"\b(?:{a}\s*/\s*{b}|{b}\s*/\s*{a}|{a}\s+or\s+{b}|{b}\s+or\s+{a})\b"


# Longer pairs first so that "his/hers" is not read as "his/her" + "s".
_PAIR_RULE = re.compile(
    rf"(?P<themself>{_pair('himself', 'herself')})|(?P<theirs>{_pair('his', 'hers')})"
    rf"|(?P<their>{_pair('his', 'her')})|(?P<them>{_pair('him', 'her')})",
    re.IGNORECASE,
)

# Titles, in any case (Mr, MR, mr, mR, ...). A dotted title is always one ("Mrs.", "MS.", "mr."); a bare one only
# before a capitalised word (a name), so "MS in nursing" and "miss a deadline" survive. Bare all-caps "MS" is the
# degree far more often than the title ("MS Nursing", "MS Office"), so it needs an all-caps word after it ("MS JANE
# DOE").
_TITLE_RULE = re.compile(
    r"(?=[mM])\b(?:"
    r"(?P<dot>(?i:mrs|mr|ms))\."
    r"|(?P<caps>MS)\b(?!\.)(?=\s+[A-Z][A-Z'’-]*[A-Z]\b)"
    r"|(?!MS\b)(?P<bare>(?i:mrs|mr|ms|miss))\b(?!\.)(?=\s+[A-Z])"
    r")"
)


def _title(m: re.Match[str]) -> str:
    if m.group("dot") is not None:
        return _like(m.group("dot"), "mx") + "."
    word = m.group("bare") or m.group("caps")
    return _like(word, "mx." if word.lower() == "miss" else "mx")


def scrub(text: str) -> str:
    """Replace gendered pronouns and titles with singular they / Mx., keeping capitalisation (see module notes)."""
    if "/" in text or " or " in text.lower():
        text = _PAIR_RULE.sub(lambda m: _like(m.group(0), str(m.lastgroup)), text)
    text = _WORD_RULE.sub(_word, text)
    return _TITLE_RULE.sub(_title, text)


# -- counting ----------------------------------------------------------------------------------------------------------

_COUNT_RULE = re.compile(
    r"(?=[hHsSmM])(?:"
    r"(?P<male>(?i:\b(?:he|him|his|himself)\b)|(?i:\bmr\.)|\bMr\b|(?!Mr\b)(?i:\bmr\b)(?!\.)(?=\s+[A-Z]))"
    r"|(?P<female>(?i:\b(?:she|her|hers|herself)\b)|(?i:\b(?:mrs|ms)\.)|\b(?:Mrs|Ms|Miss)\b"
    r"|\bMS\b(?!\.)(?=\s+[A-Z][A-Z'’-]*[A-Z]\b)|(?!(?:Mrs|Ms|Miss|MS)\b)(?i:\b(?:mrs|ms|miss)\b)(?!\.)(?=\s+[A-Z]))"
    r")"
)


def count_by_gender(text: str) -> tuple[int, int]:
    """(male, female) counts of gendered pronouns and titles in `text`."""
    male = female = 0
    for m in _COUNT_RULE.finditer(text):
        if m.lastgroup == "male":
            male += 1
        else:
            female += 1
    return male, female


def count_gendered(text: str) -> int:
    """Number of gendered pronouns and titles in `text` (what `scrub` would rewrite)."""
    return len(_COUNT_RULE.findall(text))


def scrub_batch(texts: list[str]) -> tuple[list[str], list[int]]:
    """Scrub a batch and count what is left in each text, for `Dataset.map(batched=True)`."""
    out = [scrub(t) for t in texts]
    return out, [count_gendered(t) for t in out]
