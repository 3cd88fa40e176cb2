"""Pronoun scrubbing on real-looking biography sentences."""

from __future__ import annotations

import re
import time

import pytest

from harness.data.scrub import count_by_gender, count_gendered, scrub

CASES = [
    # subject pronouns, capitalisation, verb agreement
    ("She is a registered nurse in Ohio.", "They are a registered nurse in Ohio."),
    ("He was born in Lagos and he has two children.", "They were born in Lagos and they have two children."),
    ("HE IS A CERTIFIED ACCOUNTANT.", "THEY ARE A CERTIFIED ACCOUNTANT."),
    ("She works at Mercy Hospital and teaches yoga.", "They work at Mercy Hospital and teaches yoga."),
    ("He currently lives in Austin with his wife.", "They currently live in Austin with their wife."),
    ("She studies law; he focuses on tax; he goes home.", "They study law; they focus on tax; they go home."),
    ("She also teaches at the community college.", "They also teach at the community college."),
    ("He doesn't accept new patients and she isn't either.", "They don't accept new patients and they aren't either."),
    ("She always wanted to be a dentist.", "They always wanted to be a dentist."),
    # contractions, straight and curly apostrophes
    ("She's been practicing law since 2004.", "They've been practicing law since 2004."),
    ("He's a board-certified surgeon.", "They're a board-certified surgeon."),
    ("She’s got a passion for design; he’d agree.", "They’ve got a passion for design; they’d agree."),
    ("When she'll retire is unclear.", "When they'll retire is unclear."),
    # possessive vs object "her", and "his"/"hers"
    ("Her work has appeared in The New Yorker.", "Their work has appeared in The New Yorker."),
    ("Colleagues describe her as thorough.", "Colleagues describe them as thorough."),
    ("The prize was awarded to her.", "The prize was awarded to them."),
    ("He thanked her, and she thanked him.", "They thanked them, and they thanked them."),
    ("She lives with her husband and her 2 dogs.", "They live with their husband and their 2 dogs."),
    ("Her early paintings helped her greatly.", "Their early paintings helped them greatly."),
    ("His clinic (his first) opened in 2010.", "Their clinic (their first) opened in 2010."),
    ("The idea was his, not hers.", "The idea was theirs, not theirs."),
    ("Let her go to the conference.", "Let them go to the conference."),
    # reflexives and pairs
    ("He taught himself to code; she taught herself Python.",
     "They taught themself to code; they taught themself Python."),
    ("Each author cites his/her sources; s/he may ask him or her.",
     "Each author cites their sources; they may ask them."),
    ("He or she should contact (s)he who filed.", "They should contact they who filed."),
    # punctuation around pronouns
    ("(He) founded the firm.", "(They) founded the firm."),
    ('"She" is how she signs.', '"They" is how they sign.'),
    # titles, and look-alikes that must survive
    ("Mr. Smith and Mrs. Jones met Ms. Lee.", "Mx. Smith and Mx. Jones met Mx. Lee."),
    ("Miss Daisy and Mr Brown", "Mx. Daisy and Mx Brown"),
    ("She holds an MS in nursing and never misses a deadline.",
     "They hold an MS in nursing and never misses a deadline."),
    ("Don't miss the show; the shepherd herds sheep in the Hershey hills.",
     "Don't miss the show; the shepherd herds sheep in the Hershey hills."),
    # titles in every case: dotted ones always, bare ones before a name, in the source's case style
    ("MR. SMITH met MRS. JONES and MS. LEE.", "MX. SMITH met MX. JONES and MX. LEE."),
    ("MS. Lee and MR. Brown", "MX. Lee and MX. Brown"),
    ("mr. smith, mrs. jones and ms. lee", "mx. smith, mx. jones and mx. lee"),
    ("mR. Smith and mRS. Jones", "mx. Smith and mx. Jones"),
    ("MISS Daisy and MISS DAISY", "MX. Daisy and MX. DAISY"),
    ("miss Daisy wrote to mr Brown, mrs Smith and ms Lee.", "mx. Daisy wrote to mx Brown, mx Smith and mx Lee."),
    ("MR Brown and MRS Smith", "MX Brown and MX Smith"),
    ("Mr Brown, Mrs Smith, Ms Lee and Miss Daisy", "Mx Brown, Mx Smith, Mx Lee and Mx. Daisy"),
    ("MS JANE DOE", "MX JANE DOE"),
    # the degree and the verb in other cases survive
    ("She earned an MS Nursing degree and uses MS Office.", "They earned an MS Nursing degree and uses MS Office."),
    ("Students never miss class; ms thesis drafts; MISS a deadline",
     "Students never miss class; ms thesis drafts; MISS a deadline"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_scrub_cases(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(("text", "_"), CASES)
def test_nothing_gendered_left_and_idempotent(text: str, _: str) -> None:
    out = scrub(text)
    assert count_gendered(out) == 0
    assert not re.search(r"\b(he|she|him|his|hers?|himself|herself)\b", out, re.IGNORECASE)
    assert scrub(out) == out


def test_neutral_text_unchanged() -> None:
    text = "Dr. Alex Kim is a dentist in Toronto. They graduated from McGill and the clinic opened in 2015."
    assert scrub(text) == text
    assert count_gendered(text) == 0


def test_titles_left_alone_still_count() -> None:
    # Bare titles not before a capitalised name are ambiguous, so scrub leaves them; the count must still see them.
    text = "She thanked Mrs smith."
    assert scrub(text) == "They thanked Mrs smith."
    assert count_gendered(scrub(text)) == 1


def test_counts() -> None:
    bio = "Mr. John Doe is an architect. He designs homes; his firm is in Denver. She is his partner, Mrs. Doe."
    assert count_by_gender(bio) == (4, 2)  # Mr., He, his, his / She, Mrs.
    assert count_gendered(bio) == 6
    assert count_gendered("") == 0


def test_fast_enough() -> None:
    bio = (
        "Maria Lopez is a pediatric nurse at St. Mary's Hospital in Chicago. She has over fifteen years of "
        "experience and her patients love her. She received her BSN from Loyola University, where she was "
        "president of the nursing society. In her free time she volunteers at a clinic with her husband."
    )
    texts = [bio] * 5000
    start = time.perf_counter()
    out = [scrub(t) for t in texts]
    elapsed = time.perf_counter() - start
    assert count_gendered(out[0]) == 0
    assert elapsed < 2.0, f"scrubbing 5,000 bios took {elapsed:.2f}s"


@pytest.mark.parametrize("title", ["Mr.", "MR.", "mr.", "Mrs.", "MRS.", "mrs.", "Ms.", "MS.", "ms.", "mS.",
                                   "Mr", "MR", "mr", "Mrs", "MRS", "mrs", "Ms", "ms", "Miss", "MISS", "miss"])
def test_every_case_of_every_title_is_scrubbed(title: str) -> None:
    text = f"Her colleague {title} Garcia is an attorney."
    out = scrub(text)
    assert count_gendered(text) == 2 and count_gendered(out) == 0, out
    assert title not in out.split()
    replaced = out.split()[2]
    expected = "mx" if title.islower() or title[0].islower() else "MX" if title[:2].isupper() else "Mx"
    assert replaced.rstrip(".") == expected and replaced.endswith(".") == (title.endswith(".") or
                                                                           title.lower() == "miss")


def test_title_counts_by_gender_in_every_case() -> None:
    assert count_by_gender("MR. A, mr. B, MR C, mr D, Mr E") == (5, 0)
    assert count_by_gender("MRS. A, mrs. B, MS. C, ms. D, MISS E, miss F, Ms G, MRS H") == (0, 8)
