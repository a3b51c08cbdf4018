"""Persona-domain NLI pairs made from slot frames: checked, systematic transformations.

A frame is one kind of persona fact ("I have N pets of a kind") with a sampler of slot values and
four template lists: premises, and hypotheses that the premise entails, contradicts, or leaves
open. Contradictions come from exclusive values of one slot (a different count, city, age,
job), negation and antonyms, and life-stage facts; neutrals are mostly hard, same-slot and
compatible (a dog and a cat), or the reverse of an entailment (a pet does not imply a dog).

Every template is written so its label holds for *any* sampled value; `check_frame` renders
each frame many times and rejects a template that leaves a placeholder or repeats the premise.
These sentences are written for training only; the hand-written test set shares none of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six"]


def _num(rng: random.Random, n: int) -> str:
    return NUMBER_WORDS[n - 1] if rng.random() < 0.7 else str(n)


def _other(rng: random.Random, pool: list, value) -> object:
    return rng.choice([v for v in pool if v != value])


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


@dataclass
class Frame:
    slot: str
    sample: Callable[[random.Random], dict]
    premise: list[str]
    entail: list[str] = field(default_factory=list)
    contradict: list[str] = field(default_factory=list)
    neutral: list[str] = field(default_factory=list)


# --- pets -----------------------------------------------------------------------------------
ANIMALS = [("dog", "dogs"), ("cat", "cats"), ("hamster", "hamsters"), ("rabbit", "rabbits"),
           ("parrot", "parrots"), ("horse", "horses"), ("goldfish", "goldfish"), ("turtle", "turtles"),
           ("snake", "snakes"), ("lizard", "lizards"), ("guinea pig", "guinea pigs"), ("ferret", "ferrets")]


def _pets(rng):
    (one, many), (one2, many2) = rng.sample(ANIMALS, 2)
    n = rng.randint(2, 5)
    m = _other(rng, [1, 2, 3, 4, 5, 6], n)
    return {"animal": one, "animals": many, "a_animal": _a(one), "n": _num(rng, n),
            "m_animals": f"{_num(rng, m)} {many if m > 1 else one}", "animal2": one2, "animals2": many2,
            "a_animal2": _a(one2), "name": rng.choice(["Max", "Bella", "Luna", "Charlie", "Milo", "Daisy"])}


PETS = [
    Frame("pets", _pets,
          premise=["I have {n} {animals}.", "I own {n} {animals}.", "I live with my {n} {animals}."],
          entail=["I have pets.", "I own {a_animal}.", "I am a pet owner.", "I have more than one {animal}.",
                  "my {animals} are always waiting for me when I get home",
                  "I have animals at home.", "taking care of my {animals} keeps me busy"],
          contradict=["I have {m_animals}.", "I do not have any pets.", "I have never owned a pet.",
                      "no pets for me, my landlord doesn't allow animals", "I have just one {animal}.",
                      "I don't have any {animals}.", "my only pet is {a_animal2}",
                      "my {m_animals} are driving me crazy today lol", "I'm a proud owner of {m_animals}.",
                      "my one and only {animal} is my whole world"],
          neutral=["I would love to get {a_animal2} someday.", "I like {animals2}.",
                   "my neighbor has {a_animal2}", "I also have {a_animal2}.", "I grew up with {animals2}.",
                   "I want to adopt another {animal}.", "I buy pet food in bulk",
                   "I feed the stray {animals2} in my street", "{animals2} are cute too", "I walk dogs for my neighbors."]),
    Frame("pets", _pets,
          premise=["I have {a_animal} named {name}.", "My {animal} {name} is my best friend."],
          entail=["I have a pet.", "I own {a_animal}.", "{name} is my {animal}.",
                  "my {animal} {name} just turned three lol"],
          contradict=["I have no pets.", "I have never had a pet in my life.",
                      "I don't own {a_animal}.", "there are no animals in my house"],
          neutral=["I also have {a_animal2}.", "I want {a_animal2} too.", "My sister has {a_animal2}.",
                   "I walk {name} every morning.", "I have had {name} for years."]),
    Frame("pets", _pets,
          premise=["I do not have any pets.", "I have never owned a pet.", "I don't have pets."],
          entail=["I don't own {a_animal}.", "There are no animals in my home.",
                  "nope, no pets here", "I am not a pet owner."],
          contradict=["I have {a_animal}.", "my {animal} {name} is sleeping on my lap right now",
                      "I have {n} {animals}.", "I take my {animal} to the vet every month.",
                      "I feed my {animals} every morning before work"],
          neutral=["I like {animals}.", "I want to get {a_animal} someday.", "My parents have {a_animal}.",
                   "I am allergic to {animals2}.", "I volunteer at an animal shelter."]),
]

# --- family ---------------------------------------------------------------------------------
CHILD_WORDS = [("kids", "kid"), ("children", "child"), ("sons", "son"), ("daughters", "daughter")]
SIBLINGS = [("brothers", "brother"), ("sisters", "sister")]


def _family(rng):
    kids, kid = rng.choice(CHILD_WORDS)
    sibs, sib = rng.choice(SIBLINGS)
    sibs2, sib2 = _other(rng, SIBLINGS, (sibs, sib))
    n = rng.randint(2, 5)
    m = _other(rng, [1, 2, 3, 4, 5, 6], n)
    spouse = rng.choice(["husband", "wife"])
    return {"kids": kids, "kid": kid, "n": _num(rng, n), "m_kids": f"{_num(rng, m)} {kids if m > 1 else kid}",
            "sibs": sibs, "sib": sib, "sib2": sib2, "m_sibs": f"{_num(rng, m)} {sibs if m > 1 else sib}",
            "spouse": spouse, "years": rng.randint(3, 30)}


FAMILY = [
    Frame("family", _family,
          premise=["I have {n} {kids}.", "I am the parent of {n} {kids}.", "I'm raising {n} {kids}."],
          entail=["I am a parent.", "I have children.", "I have more than one child.",
                  "being a parent is the best thing that ever happened to me",
                  "my {kids} keep me so busy lol"],
          contradict=["I have {m_kids}.", "I do not have any children.", "I have no kids.",
                      "I've never had children.",
                      "no kids for me, never wanted them", "being a parent of {m_kids} is exhausting but worth it",
                      "my only {kid} just started school", "I'm a proud parent of {m_kids}."],
          neutral=["I am married.", "I want more {kids}.", "My {kids} love soccer.",
                   "I coach my son's baseball team.", "I am a stay at home parent.", "I am divorced."]),
    Frame("family", _family,
          premise=["I have {n} {sibs}.", "I grew up with {n} {sibs}."],
          entail=["I have siblings.", "I am not an only child.", "I have {a_sib}.",
                  "growing up with {n} {sibs} was chaos haha"],
          contradict=["I am an only child.", "I have {m_sibs}.", "I do not have any siblings.",
                      "i never had any brothers or sisters"],
          neutral=["I have a {sib2} too.", "I am the youngest in my family.", "My {sibs} live far away.",
                   "I have {a_kid}.", "My parents are divorced."]),
    Frame("family", _family,
          premise=["I am married.", "I have been married for {years} years.", "I live with my {spouse}."],
          entail=["I have a spouse.", "I am not single.", "my {spouse} and I met in college",
                  "I have a {spouse}."],
          contradict=["I have never been married.", "I am single.", "I have never had a partner.",
                      "still looking for the right person to marry, no luck yet"],
          neutral=["I have {n} {kids}.", "I want to have children someday.", "My {spouse} is a teacher.",
                   "We live in the suburbs.", "My parents have been married for forty years."]),
    Frame("family", _family,
          premise=["I am an only child.", "I do not have any siblings."],
          entail=["I have no brothers.", "I have no sisters.", "i grew up without siblings"],
          contradict=["I have {n} {sibs}.", "My older {sib} is a doctor.", "I have a twin {sib}.",
                      "my little {sib} is visiting me this weekend"],
          neutral=["I have {n} {kids}.", "My parents are very strict.", "I have many cousins.",
                   "I always wanted a {sib}."]),
]
def _fix_family(values: dict) -> dict:
    values["a_sib"] = _a(values["sib"])
    values["a_kid"] = _a(values["kid"])
    return values


# --- job ------------------------------------------------------------------------------------
JOBS = [  # (job, where they work, field)
    ("nurse", "at a hospital", "healthcare"), ("doctor", "at a hospital", "medicine"),
    ("teacher", "at a school", "education"), ("chef", "in a restaurant kitchen", "food service"),
    ("lawyer", "at a law firm", "law"), ("firefighter", "at a fire station", "emergency services"),
    ("pilot", "for an airline", "aviation"), ("accountant", "at an accounting firm", "finance"),
    ("software engineer", "at a tech company", "tech"), ("farmer", "on my farm", "agriculture"),
    ("mechanic", "at an auto shop", "car repair"), ("electrician", "on construction sites", "the trades"),
    ("cashier", "at a grocery store", "retail"), ("truck driver", "on the highway", "trucking"),
    ("dentist", "at a dental clinic", "dentistry"), ("librarian", "at the public library", "libraries"),
    ("police officer", "for the city police", "law enforcement"), ("plumber", "in people's homes", "plumbing"),
    ("journalist", "for a newspaper", "journalism"), ("veterinarian", "at an animal clinic", "animal care"),
    ("barista", "at a coffee shop", "coffee"), ("professor", "at a university", "academia"),
]


def _job(rng):
    (job, where, fld), (job2, where2, fld2) = rng.sample(JOBS, 2)
    return {"job": job, "a_job": _a(job), "where": where, "field": fld, "job2": job2, "a_job2": _a(job2),
            "where2": where2, "years": rng.randint(2, 25)}


JOB = [
    Frame("job", _job,
          premise=["I am {a_job}.", "I work as {a_job}.", "I have been {a_job} for {years} years."],
          entail=["I have a job.", "I work {where}.", "I am employed.", "I work in {field}.",
                  "being {a_job} is hard work but I love it", "my job as {a_job} pays the bills"],
          contradict=["I am unemployed.", "I have never had a job.", "I do not work.",
                      "I am {a_job2} and that is my only job.", "i've been out of work for two years now",
                      "I have never worked as {a_job}."],
          neutral=["I work long hours.", "I want to change careers.", "My mother was {a_job2}.",
                   "I work night shifts.", "I love my coworkers.", "I studied hard to get my job."]),
    Frame("job", _job,
          premise=["I am unemployed.", "I do not have a job.", "I lost my job and I am looking for work."],
          entail=["I am not working right now.", "I am looking for a job.", "i don't have a job at the moment"],
          contradict=["I work as {a_job}.", "I work full time {where}.", "my boss at work is so annoying",
                      "I have been {a_job} for {years} years and I still go in every day."],
          neutral=["I used to be {a_job}.", "I want to become {a_job2}.", "I have a college degree.",
                   "My {job} friend is helping me find work."]),
]

def _workplace(rng):
    return _job(rng)


JOB += [
    Frame("job", _workplace,
          premise=["I work from home every day.", "I work remotely full time and never go to an office."],
          entail=["I do not commute to an office.", "my office is my kitchen table lol", "I work remotely."],
          contradict=["my commute to the office takes an hour each way", "I drive to the office every morning.",
                      "I work at the office downtown five days a week.", "I'm {a_job2} {where2}, I'm never home"],
          neutral=["I work long hours.", "I have a home office.", "I love my job.", "I have a dog who keeps me company.",
                   "I work in {field}."]),
    Frame("job", _job,
          premise=["I am {a_job}.", "I work as {a_job}."],
          entail=["I am employed.", "I have a job.", "work {where} keeps me busy"],
          contradict=["I work as {a_job2} and I've never had another job.", "my only job is being {a_job2}",
                      "I have been {a_job2} my whole career and nothing else.", "i've never worked a day in my life lol"],
          neutral=["I want to become {a_job2} someday.", "My dad is {a_job2}.", "I work weekends.",
                   "My best friend is {a_job2}.", "I am good at my job."]),
]

# --- age ------------------------------------------------------------------------------------
YOUNG_STAGE = ["I am in high school.", "I just got my learner's permit.", "I live with my parents and go to middle school.",
               "i just started my freshman year of high school", "I am a teenager."]
OLD_STAGE = ["I have five grandchildren.", "I retired after forty years of work.", "I am a senior citizen.",
             "my great grandson just started kindergarten", "I have been retired for a decade."]


def _decade_phrase(age: int) -> str:
    part = "early" if age % 10 <= 3 else ("mid" if age % 10 <= 6 else "late")
    return f"{part} {age // 10 * 10}s"


def _age(rng):
    young = rng.randint(14, 19)
    adult = rng.randint(22, 49)
    old = rng.randint(66, 90)
    return {"young": young, "adult": adult, "old": old, "adult2": adult + rng.choice([-1, 1]) * rng.randint(9, 15),
            "old2": old - rng.randint(25, 40), "decade": f"{adult // 10 * 10}s",
            "young_stage": rng.choice(YOUNG_STAGE), "old_stage": rng.choice(OLD_STAGE),
            "adult_phrase": _decade_phrase(adult), "wrong_phrase": _decade_phrase(adult + rng.choice([-1, 1]) * rng.randint(12, 25)),
            "old_phrase": _decade_phrase(old)}


AGE = [
    Frame("age", _age,
          premise=["I am {young} years old.", "I am {young}.", "I'm a {young} year old."],
          entail=["I am a teenager.", "I am under 21.", "I am young.", "I am younger than 20."],
          contradict=["{old_stage}", "I am {old} years old.", "I have been married for thirty years.",
                      "I retired from teaching last year.", "my grandkids visit every sunday"],
          neutral=["I like video games.", "I play soccer.", "I want to be a doctor someday.",
                   "I have a younger brother.", "I am in a band with my friends."]),
    Frame("age", _age,
          premise=["I am {adult} years old.", "I am {adult}.", "I just turned {adult}."],
          entail=["I am an adult.", "I am in my {decade}.", "I am over 18.", "I am old enough to vote.",
                  "I'm in my {adult_phrase} lol",
                  "being {adult} is great so far"],
          contradict=["I am {adult2} years old.", "I am {old} years old.", "I am {young} years old.",
                      "I am a senior citizen.", "{young_stage}", "I'm in my {wrong_phrase}, still figuring life out",
                      "I am in my {wrong_phrase}."],
          neutral=["I have two kids.", "I am married.", "I work in an office.", "I love hiking.",
                   "I want to travel the world."]),
    Frame("age", _age,
          premise=["I am {old} years old.", "I am {old}.", "I am {old} and retired."],
          entail=["I am older than 60.", "I am a senior.", "I am not young anymore.", "I am an adult."],
          contradict=["{young_stage}", "I am {young}.", "I am {old2} years old.",
                      "I just graduated from high school.", "my mom still packs my school lunch lol"],
          neutral=["I have grandchildren.", "I like gardening.", "I live alone.", "I play bingo on Tuesdays.",
                   "I used to be a teacher."]),
]

# --- location -------------------------------------------------------------------------------
CITIES = [  # (city, region, country, continent)
    ("Chicago", "Illinois", "the United States", "North America"), ("Houston", "Texas", "the United States", "North America"),
    ("Miami", "Florida", "the United States", "North America"), ("Seattle", "Washington", "the United States", "North America"),
    ("Denver", "Colorado", "the United States", "North America"), ("Boston", "Massachusetts", "the United States", "North America"),
    ("Atlanta", "Georgia", "the United States", "North America"), ("Phoenix", "Arizona", "the United States", "North America"),
    ("Toronto", "Ontario", "Canada", "North America"), ("Vancouver", "British Columbia", "Canada", "North America"),
    ("London", "England", "the United Kingdom", "Europe"), ("Manchester", "England", "the United Kingdom", "Europe"),
    ("Berlin", "Germany", "Germany", "Europe"), ("Madrid", "Spain", "Spain", "Europe"),
    ("Rome", "Italy", "Italy", "Europe"), ("Tokyo", "Japan", "Japan", "Asia"), ("Seoul", "South Korea", "South Korea", "Asia"),
    ("Sydney", "New South Wales", "Australia", "Australia"), ("Mexico City", "Mexico", "Mexico", "North America"),
    ("Mumbai", "India", "India", "Asia"), ("Cairo", "Egypt", "Egypt", "Africa"), ("Lima", "Peru", "Peru", "South America"),
]


def _location(rng):
    c1, c2 = rng.sample(CITIES, 2)
    far = rng.choice([c for c in CITIES if c[2] != c1[2]])
    return {"city": c1[0], "region": c1[1], "country": c1[2], "continent": c1[3], "city2": c2[0],
            "far_city": far[0], "far_country": far[2]}


LOCATION = [
    Frame("location", _location,
          premise=["I live in {city}.", "I have lived in {city} my whole life.", "My home is in {city}."],
          entail=["I live in {country}.", "I live in a city.", "I live in {continent}.", "I live in {region}.",
                  "life in {region} is pretty good lol",
                  "the weather in {city} has been crazy this week", "I am a resident of {city}."],
          contradict=["I live in {far_city}.", "I have never been to {city}.", "I live in {far_country}.",
                      "I live on a farm far away from any city.", "i've lived in {far_city} since i was born",
                      "i live in {far_city}, the weather here is awful today lol", "My apartment is in {far_city}."],
          neutral=["I grew up in {city2}.", "I want to visit {far_city}.", "I love my neighborhood.",
                   "I was born in {city2}.", "My parents live in {far_city}.", "I take the bus to work.",
                   "I'm flying to {far_country} next month!", "have you ever been to {far_city}?",
                   "I spent a semester in {far_city}.", "i grew up in {far_city} actually", "I was raised in {far_country}.",
                   "My family moved here from {far_city} when I was ten."]),
    Frame("location", _location,
          premise=["I have never left {country}.", "I have never traveled outside of {country}."],
          entail=["I have never been to {far_country}.", "I have never lived abroad.",
                  "never been out of the country, maybe someday"],
          contradict=["I grew up in {far_city}.", "I spent last summer in {far_city}.",
                      "I was born and raised in {far_country}.", "my trip to {far_city} last year was amazing"],
          neutral=["I want to visit {far_city}.", "I live in a small town.", "I speak only English.",
                   "I like to road trip."]),
]

# --- diet -----------------------------------------------------------------------------------
MEAT_EATING = ["I eat steak every Friday night.", "Bacon is my favorite breakfast.", "I love a good burger.",
               "my favorite food is chicken wings", "I had pork ribs for dinner last night.",
               "I'm making beef stew tonight, can't wait", "I eat meat with every meal."]
ALLERGENS = [("peanuts", "peanut", "peanut butter sandwiches"), ("shellfish", "shellfish", "shrimp"),
             ("dairy", "dairy", "cheese pizza"), ("gluten", "gluten", "fresh bread"), ("eggs", "egg", "omelettes"),
             ("strawberries", "strawberry", "strawberry jam")]


def _diet(rng):
    allergen, adjective, food = rng.choice(ALLERGENS)
    return {"meat": rng.choice(MEAT_EATING), "allergen": allergen, "allergen_adj": adjective, "allergen_food": food,
            "veg": rng.choice(["pasta", "salads", "tofu", "rice and beans", "fresh fruit", "curry"]),
            "drink": rng.choice(["coffee", "soda", "tea", "energy drinks"])}


DIET = [
    Frame("diet", _diet,
          premise=["I am a vegetarian.", "I do not eat meat.", "I stopped eating meat years ago."],
          entail=["I do not eat beef.", "I don't eat chicken.", "meat is not part of my diet",
                  "I never eat steak.", "no meat for me, thanks"],
          contradict=["{meat}", "I love eating meat.", "I could never give up meat.",
                      "i'm grilling steaks for everyone this weekend, they're for me too",
                      "i had a cheeseburger for lunch, so good", "I eat chicken every day."],
          neutral=["I love {veg}.", "I like to cook.", "I shop at farmers markets.", "I eat a lot of {veg}.",
                   "my friends think I'm a great cook", "I eat eggs for breakfast.", "I love cheese.",
                   "my husband eats meat though"]),
    Frame("diet", _diet,
          premise=["I am vegan.", "I am a strict vegan.", "I don't eat any animal products."],
          entail=["I do not eat dairy.", "I don't eat eggs.", "I do not eat meat.", "I avoid cheese.",
                  "no animal products for me", "I eat a plant-based diet."],
          contradict=["{meat}", "I eat eggs every morning.", "I love cheese and eat it every day.",
                      "i put real butter on everything lol", "I had a glass of milk with dinner."],
          neutral=["I love {veg}.", "I cook at home.", "I have a garden.", "I do yoga.", "My sister eats meat."]),
    Frame("diet", _diet,
          premise=["I keep kosher.", "I follow a halal diet.", "I do not eat pork for religious reasons."],
          entail=["I don't eat pork.", "I never eat bacon.", "pork is off the menu for me"],
          contradict=["I eat pork ribs every weekend.", "bacon is my favorite breakfast food",
                      "I had a ham sandwich for lunch."],
          neutral=["I like chicken.", "I love cooking for my family.", "I go to services every week.", "I love {veg}."]),
    Frame("diet", _diet,
          premise=["I am allergic to {allergen}.", "I have a severe {allergen_adj} allergy."],
          entail=["I have a food allergy.", "I have to avoid {allergen}.", "I have an allergy."],
          contradict=["I eat {allergen_food} every day with no problems.", "I do not have any allergies.",
                      "I've never been allergic to anything"],
          neutral=["I love {veg}.", "I carry medicine with me.", "I like trying new restaurants.",
                   "My brother is allergic to cats."]),
    Frame("diet", _diet,
          premise=["I drink {drink} every day.", "I need {drink} to get through the day."],
          entail=["I drink {drink}.", "I like {drink}.", "can't start my day without {drink} lol"],
          contradict=["I never drink {drink}.", "I have never tried {drink}.", "I quit {drink} completely."],
          neutral=["I like {veg}.", "I wake up early.", "I drink a lot of water too."]),
]

# --- habits ---------------------------------------------------------------------------------
def _habits(rng):
    return {"drink": rng.choice(["coffee", "tea", "soda", "juice"]), "miles": _num(rng, rng.randint(2, 6)), "hour": rng.choice(["5", "6", "5:30"]),
            "late": rng.choice(["noon", "11 am", "ten"]), "sport": rng.choice(["tennis", "basketball", "soccer"])}


HABITS = [
    Frame("habits", _habits,
          premise=["I have never smoked.", "I do not smoke.", "I quit smoking ten years ago."],
          entail=["I am not a smoker.", "I don't smoke cigarettes.", "cigarettes? no thanks, not for me"],
          contradict=["I smoke a pack a day.", "I smoke cigarettes every day.", "i need a smoke break right now",
                      "I am a heavy smoker.", "i'm trying to quit smoking, day two lol", "I have smoked since high school."],
          neutral=["I drink coffee.", "I go to the gym.", "My father smokes.", "I like hiking."]),
    Frame("habits", _habits,
          premise=["I do not drink alcohol.", "I have been sober for years.", "I never drink alcohol."],
          entail=["I don't drink beer.", "I do not drink wine.", "no alcohol for me"],
          contradict=["I have a beer every night.", "I love wine.", "I get drunk every weekend.",
                      "let's grab some beers after work!", "i had a couple beers last night with the guys",
                      "I'm a wine lover, I have a glass every night."],
          neutral=["I drink a lot of coffee.", "I go to bed early.", "I love parties.", "I like to dance.",
                   "I drink {drink} every day.", "I drink lots of water.", "my friends drink but I don't mind"]),
    Frame("habits", _habits,
          premise=["I run {miles} miles every morning.", "I go to the gym every day.", "I exercise daily."],
          entail=["I exercise.", "I am active.", "I work out regularly.", "staying active is a big part of my life"],
          contradict=["I never exercise.", "I hate working out and never do it.", "I am a couch potato who never moves.",
                      "i haven't been to a gym in my life"],
          neutral=["I play {sport}.", "I eat healthy.", "I want to run a marathon.", "I wake up early."]),
    Frame("habits", _habits,
          premise=["I wake up at {hour} am every day.", "I am an early riser.", "I get up before sunrise every morning."],
          entail=["I get up early.", "I am a morning person.", "mornings are my favorite time of day"],
          contradict=["I never wake up before {late}.", "I am a night owl who sleeps until noon.",
                      "I sleep in until {late} every day.", "i'm never up before lunch",
                      "i usually sleep till {late} on weekdays"],
          neutral=["I drink coffee.", "I go for a run.", "I like to read.", "I work from home."]),
]

# --- abilities ------------------------------------------------------------------------------
LANGUAGES = ["French", "Spanish", "German", "Japanese", "Italian", "Portuguese", "Mandarin", "Russian"]
INSTRUMENTS = ["piano", "guitar", "violin", "drums", "cello", "flute", "saxophone", "trumpet"]


def _abilities(rng):
    lang, lang2 = rng.sample(LANGUAGES, 2)
    inst, inst2 = rng.sample(INSTRUMENTS, 2)
    return {"lang": lang, "lang2": lang2, "inst": inst, "inst2": inst2}


ABILITIES = [
    Frame("abilities", _abilities,
          premise=["I speak fluent {lang}.", "I can speak {lang}.", "I am fluent in {lang}."],
          entail=["I speak {lang}.", "I know a second language.", "I am bilingual.",
                  "I can talk to people in {lang}."],
          contradict=["I only speak English.", "I do not speak {lang}.", "I can't speak any language but English.",
                      "i don't know a single word of {lang}"],
          neutral=["I want to learn {lang2}.", "I have been to many countries.", "I am learning {lang2}.",
                   "My mother is a teacher."]),
    Frame("abilities", _abilities,
          premise=["I play the {inst}.", "I have played the {inst} since I was a kid."],
          entail=["I play an instrument.", "I can play music.", "I play music.", "practicing {inst} every night"],
          contradict=["I can't play any instrument.", "I have never played music in my life.",
                      "I do not play the {inst}.", "I have no musical talent at all, I can't play anything"],
          neutral=["I also play the {inst2}.", "I want to learn the {inst2}.", "I love jazz.",
                   "My brother plays the {inst2}.", "I sing in a choir.", "I can sing well.", "I can dance."]),
    Frame("abilities", _abilities,
          premise=["I can swim.", "I was on my school swim team.", "I am a strong swimmer."],
          entail=["I know how to swim.", "I can swim.", "swimming comes easy to me"],
          contradict=["I can't swim.", "I never learned to swim.", "i'd drown if you threw me in a pool lol"],
          neutral=["I can ride a bike.", "I like the ocean.", "I play the {inst}.", "I can speak {lang}.",
                   "I want to learn to surf."]),
    Frame("abilities", _abilities,
          premise=["I can't swim.", "I never learned how to swim.", "I do not know how to swim."],
          entail=["I am not a swimmer.", "I can't swim laps.", "I stay out of deep water because I can't swim"],
          contradict=["I swim laps every morning.", "I am a lifeguard.", "I was on my college swim team.",
                      "swimming is my favorite sport, I'm in the pool every day"],
          neutral=["I love the beach.", "I like boats.", "I go hiking.", "I am afraid of sharks."]),
    Frame("abilities", _abilities,
          premise=["I do not know how to drive.", "I don't have a driver's license.", "I have never driven a car."],
          entail=["I can't drive.", "I do not drive.", "I take the bus everywhere because I can't drive"],
          contradict=["I drive to work every day.", "I am a truck driver.", "I love driving my car.",
                      "just drove six hours to see my family"],
          neutral=["I ride a bike.", "I live in a big city.", "I take the train.", "I want to learn to drive."]),
]

# --- hobbies and preferences ----------------------------------------------------------------
HOBBIES = ["hiking", "painting", "reading", "fishing", "gardening", "knitting", "cooking", "dancing",
           "camping", "photography", "surfing", "skiing", "baking", "bowling", "chess", "yoga"]
FAVORITE = {  # kind -> values that exclude each other as "my favorite"
    "color": ["red", "blue", "green", "purple", "yellow", "orange", "black", "pink"],
    "season": ["winter", "summer", "spring", "fall"],
    "food": ["pizza", "sushi", "tacos", "pasta", "burgers", "curry", "ice cream"],
    "sport": ["basketball", "soccer", "baseball", "tennis", "hockey", "golf", "football"],
    "animal": ["elephants", "dolphins", "tigers", "owls", "penguins", "wolves"],
    "music": ["country", "jazz", "rap", "classical", "rock", "pop", "heavy metal"],
}


def _hobby(rng):
    h, h2 = rng.sample(HOBBIES, 2)
    kind = rng.choice(list(FAVORITE))
    fav, fav2 = rng.sample(FAVORITE[kind], 2)
    return {"hobby": h, "hobby2": h2, "kind": kind, "fav": fav, "fav2": fav2}


PREFERENCES = [
    Frame("hobbies", _hobby,
          premise=["I love {hobby}.", "{hobby_cap} is my favorite hobby.", "I am passionate about {hobby}."],
          entail=["I like {hobby}.", "I enjoy {hobby}.", "I have a hobby.", "{hobby} is something I enjoy",
                  "honestly {hobby} makes me so happy"],
          contradict=["I hate {hobby}.", "I can't stand {hobby}.", "I have never liked {hobby}.",
                      "{hobby} is the most boring thing ever, i hate it", "I do not enjoy {hobby} at all."],
          neutral=["I like {hobby2}.", "I want to try {hobby2}.", "I also love {hobby2}.",
                   "My sister loves {hobby2}.", "I do {hobby} with my friends.", "I am good at {hobby2}."]),
    Frame("hobbies", _hobby,
          premise=["I like {hobby}.", "I enjoy {hobby}."],
          entail=["{hobby} is fun for me.", "I don't dislike {hobby}."],
          contradict=["I hate {hobby}.", "I can't stand {hobby}.", "{hobby} bores me to tears"],
          neutral=["I love {hobby}.", "{hobby_cap} is my favorite hobby.", "I like {hobby2}.",
                   "I am a professional at {hobby}.", "I do {hobby} every day."]),
    Frame("hobbies", _hobby,
          premise=["I took up {hobby} last month.", "I just started {hobby} a few weeks ago."],
          entail=["I am new to {hobby}.", "I'm a beginner at {hobby}.", "still learning {hobby}, it's all new to me"],
          contradict=["I have done {hobby} since I was a kid.",
                      "I've been into {hobby} for twenty years.", "{hobby} has been my thing since childhood"],
          neutral=["I love {hobby2}.", "I want to get better at {hobby}.", "My friend got me into {hobby}.",
                   "I do {hobby2} too."]),
    Frame("hobbies", _hobby,
          premise=["I hate {hobby}.", "I can't stand {hobby}.", "I really dislike {hobby}."],
          entail=["I dislike {hobby}.", "I don't enjoy {hobby}.", "{hobby} is not for me", "I do not like {hobby}.",
                  "you won't catch me {hobby} lol"],
          contradict=["I love {hobby}.", "{hobby_cap} is my favorite hobby.", "I enjoy {hobby} every weekend.",
                      "{hobby} makes me so happy"],
          neutral=["I like {hobby2}.", "I hate {hobby2} too.", "My sister loves {hobby}.", "I want to try {hobby2}."]),
    Frame("preferences", _hobby,
          premise=["I prefer {fav} to {fav2}.", "I like {fav} more than {fav2}."],
          entail=["I like {fav} better than {fav2}.", "if I had to choose, I'd pick {fav} over {fav2}"],
          contradict=["I prefer {fav2} to {fav}.", "I'd take {fav2} over {fav} any day.", "{fav2} beats {fav} for me"],
          neutral=["I like {fav2} too.", "I like lots of things.", "My brother prefers {fav2}.", "I don't hate {fav2}."]),
    Frame("preferences", _hobby,
          premise=["My favorite {kind} is {fav}.", "{fav_cap} is my favorite {kind}."],
          entail=["I like {fav}.", "I have a favorite {kind}.", "nothing beats {fav} for me",
                  "{fav} is the best {kind} in my opinion"],
          contradict=["My favorite {kind} is {fav2}.", "I hate {fav}.", "{fav2_cap} is my favorite {kind}.",
                      "I really don't like {fav}.", "{fav2} is my favorite {kind} by far",
                      "{fav2} has always been my fav {kind} tbh", "nothing beats {fav2}, best {kind} ever",
                      "my all time favorite {kind}? {fav2} for sure"],
          neutral=["I like {fav2} too.", "I don't mind {fav2}.", "My friend's favorite {kind} is {fav2}.",
                   "I like lots of things.", "I have liked {fav} since I was a kid."]),
]

# --- education ------------------------------------------------------------------------------
MAJORS = ["history", "biology", "chemistry", "nursing", "engineering", "art", "economics", "psychology"]


def _education(rng):
    major, major2 = rng.sample(MAJORS, 2)
    return {"major": major, "major2": major2, "school": rng.choice(["state university", "a community college",
                                                                  "an art school", "the local college"])}


EDUCATION = [
    Frame("education", _education,
          premise=["I have a degree in {major}.", "I graduated from college with a {major} degree.",
                   "I studied {major} at {school}."],
          entail=["I went to college.", "I studied {major}.", "I have a college education.",
                  "back when I was studying {major} in college..."],
          contradict=["I never went to college.", "I dropped out of high school and never went back.",
                      "I have never studied {major}.", "college was never for me, never went"],
          neutral=["I want a master's degree.", "I work as a waiter.", "I also took {major2} classes.",
                   "I loved my college roommates.", "I still have student loans."]),
    Frame("education", _education,
          premise=["I never finished high school.", "I dropped out of high school."],
          entail=["I do not have a high school diploma.", "I don't have a college degree.",
                  "i didn't finish school"],
          contradict=["I have a master's degree in {major}.", "I graduated from college.",
                      "I have a PhD.", "after college I got my law degree"],
          neutral=["I work in construction.", "I want to get my GED.", "I am good with my hands.",
                   "I like to read."]),
    Frame("education", _education,
          premise=["I am a college student.", "I am studying {major} in college."],
          entail=["I go to college.", "I am a student.", "i have so many exams this semester"],
          contradict=["I have never been to college.", "I finished school fifty years ago.",
                      "I am retired.", "I'm in my first year of high school.", "i finished my phd ten years ago"],
          neutral=["I live in a dorm.", "I work part time.", "I want to study abroad.", "I like my professors."]),
]

# --- possessions ----------------------------------------------------------------------------
VEHICLES = ["car", "truck", "motorcycle", "minivan", "jeep"]


def _possessions(rng):
    v, v2 = rng.sample(VEHICLES, 2)
    return {"vehicle": v, "a_vehicle": _a(v), "vehicle2": v2, "a_vehicle2": _a(v2),
            "color": rng.choice(["red", "blue", "black", "white", "green"])}


POSSESSIONS = [
    Frame("possessions", _possessions,
          premise=["I drive {a_vehicle}.", "I own a {color} {vehicle}.", "I just bought a new {vehicle}."],
          entail=["I own a vehicle.", "I have {a_vehicle}.", "my {vehicle} needs an oil change"],
          contradict=["I do not own any vehicle.", "I have never owned {a_vehicle}.", "I don't have a car or any vehicle.",
                      "I sold my only vehicle and now I walk everywhere"],
          neutral=["I also own {a_vehicle2}.", "I want {a_vehicle2}.", "I like road trips.", "My dad fixes cars.",
                   "I drive to work."]),
    Frame("possessions", _possessions,
          premise=["I own a house.", "I bought my own home last year.", "I am a homeowner."],
          entail=["I have a home.", "I own property.", "my house needs a new roof"],
          contradict=["I have never owned a home.", "I am homeless.", "I don't own any property."],
          neutral=["I have a big backyard.", "I own {a_vehicle}.", "I live with my family.", "I like gardening."]),
]

DEVICES = [("phone", "I check my phone first thing every morning.", "my phone battery is always dying lol"),
           ("TV", "I watch TV every night.", "just got a huge new tv for the living room"),
           ("computer", "I work on my computer all day.", "my laptop keeps freezing ugh")]


def _device(rng):
    device, use, chat = rng.choice(DEVICES)
    return {"device": device, "use": use, "use_chat": chat}


POSSESSIONS += [
    Frame("possessions", _device,
          premise=["I do not own a {device}.", "I have never owned a {device}."],
          entail=["I have no {device}.", "there's no {device} in my life"],
          contradict=["{use}", "{use_chat}", "I own a {device}."],
          neutral=["I like to read books.", "I like going outside.", "My friends think I'm old fashioned.",
                   "I write letters by hand."]),
    Frame("possessions", _possessions,
          premise=["I rent an apartment.", "I live in a rented apartment downtown."],
          entail=["I am a renter.", "I pay rent every month.", "my landlord never fixes anything lol"],
          contradict=["I own the house I live in.", "I live in the house I bought last year.",
                      "I live on a farm I own."],
          neutral=["I have a roommate.", "I have {a_vehicle}.", "I want to buy a house someday.", "I have a balcony."]),
]

# --- health ---------------------------------------------------------------------------------
def _health(rng):
    return {"bone": rng.choice(["arm", "leg", "wrist", "ankle"]), "years": rng.randint(5, 20)}


HEALTH = [
    Frame("health", _health,
          premise=["I have diabetes.", "I am diabetic."],
          entail=["I have a medical condition.", "I have to watch my blood sugar.", "I have a chronic illness."],
          contradict=["I have no health problems at all.", "I have never been sick a day in my life.",
                      "i'm completely healthy, no conditions at all"],
          neutral=["I go running.", "I love to cook.", "My mother is a nurse.", "I see my doctor every month."]),
    Frame("health", _health,
          premise=["I wear glasses.", "I have worn glasses since I was a kid.", "I am nearsighted."],
          entail=["My eyesight is not perfect.", "I need help to see clearly.",
                  "my glasses are always getting smudged"],
          contradict=["I have perfect vision.", "I have never needed glasses.", "my eyesight is perfect, never needed glasses"],
          neutral=["I like to read.", "I wear a hat.", "I work on a computer.", "My sister wears contacts."]),
    Frame("health", _health,
          premise=["I broke my {bone} last year.", "I have a broken {bone}."],
          entail=["I have broken a bone.", "I have been injured.", "my {bone} still hurts sometimes"],
          contradict=["I have never broken a bone.", "I have never been injured in my life."],
          neutral=["I play soccer.", "I love skiing.", "I go to physical therapy.", "I have a dog."]),
    Frame("health", _health,
          premise=["I am deaf.", "I cannot hear."],
          entail=["I am hard of hearing.", "I have a hearing disability.",
                  "I am not able to hear sounds."],
          contradict=["I have perfect hearing.", "I can hear everything clearly.",
                      "i love hearing the rain on the roof", "I listen to the radio every morning."],
          neutral=["I know sign language.", "I like to paint.", "I love to read.", "I have a cat."]),
]


# --- identity statements: "I am X" next to "I am Y" -----------------------------------------
# Values inside a group exclude each other; values from two groups are independent. Without
# these pairs the model learns that two different "I am ..." sentences clash.
IDENTITY_GROUPS = [
    ["single", "married"], ["left-handed", "right-handed"], ["vegan", "a big meat eater"],
    ["a morning person", "a night owl"], ["very shy", "very outgoing"], ["very tall", "very short"],
    ["unemployed", "working two full-time jobs"], ["an only child", "one of six siblings"],
    ["afraid of dogs", "a dog trainer"], ["a nurse", "a lawyer"], ["a teenager", "a grandmother"],
]


def _identity(rng):
    group, other_group = rng.sample(IDENTITY_GROUPS, 2)
    a, a_alt = rng.sample(group, 2)
    kinds = rng.sample(list(FAVORITE), 2)
    return {"a": a, "a_alt": a_alt, "b": rng.choice(other_group), "kind": kinds[0], "kind2": kinds[1],
            "fav": rng.choice(FAVORITE[kinds[0]]), "fav_other": rng.choice(FAVORITE[kinds[1]])}


IDENTITY = [
    Frame("preferences", _identity,
          premise=["I am {a}.", "I'm {a}."],
          entail=["I would say I am {a}.", "honestly i'm {a} lol"],
          contradict=["I am {a_alt}.", "i'm {a_alt} tbh", "People know me as {a_alt}."],
          neutral=["I am {b}.", "i'm {b} lol", "I'm also {b}.", "My favorite {kind} is {fav}."]),
    Frame("preferences", _identity,
          premise=["My favorite {kind} is {fav}."],
          entail=["I like {fav}."],
          contradict=["I can't stand {fav}."],
          neutral=["My favorite {kind2} is {fav_other}.", "my fav {kind2} is {fav_other} haha", "I am {b}.",
                   "I really like {fav_other} too."]),
]


def _hobby_caps(values: dict) -> dict:
    for key in ("hobby", "fav", "fav2"):
        if key in values:
            values[f"{key}_cap"] = values[key][:1].upper() + values[key][1:]
    return values


def _finish(values: dict) -> dict:
    if "sib" in values:
        _fix_family(values)
    return _hobby_caps(values)


FRAMES: list[Frame] = (PETS + FAMILY + JOB + AGE + LOCATION + DIET + HABITS + ABILITIES + PREFERENCES
                       + EDUCATION + POSSESSIONS + HEALTH + IDENTITY)

LABEL_FIELDS = {"entailment": "entail", "contradiction": "contradict", "neutral": "neutral"}


def frames_by_slot() -> dict[str, list[Frame]]:
    slots: dict[str, list[Frame]] = {}
    for frame in FRAMES:
        slots.setdefault(frame.slot, []).append(frame)
    return slots


def pick_frame(rng: random.Random) -> Frame:
    """A slot uniformly, then one of its frames: slots with few frames are not drowned out."""
    slots = frames_by_slot()
    return rng.choice(slots[rng.choice(sorted(slots))])


def render_frame(frame: Frame, rng: random.Random, label: str) -> tuple[str, str]:
    values = _finish(frame.sample(rng))
    premise = rng.choice(frame.premise).format(**values)
    hypothesis = rng.choice(getattr(frame, LABEL_FIELDS[label])).format(**values)
    return _cap(premise), hypothesis


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def check_frames(trials: int = 50, seed: int = 0) -> list[str]:
    """Render every template many times; return problems (empty list: all frames are sound)."""
    rng = random.Random(seed)
    problems = []
    for frame in FRAMES:
        for label, attr in LABEL_FIELDS.items():
            for template in getattr(frame, attr):
                for _ in range(trials):
                    values = _finish(frame.sample(rng))
                    try:
                        hyp = template.format(**values)
                        prem = [p.format(**values) for p in frame.premise]
                    except KeyError as exc:
                        problems.append(f"{frame.slot}: {template!r} needs {exc}")
                        break
                    if any(h.strip().lower() == hyp.strip().lower() for h in prem) and label != "entailment":
                        problems.append(f"{frame.slot}: {template!r} equals a premise but is {label}")
                        break
    return problems
