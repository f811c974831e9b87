"""The built-in corpus: simple children's stories from a seeded generator.

Nothing may be downloaded, so `gpt2 demo` and the tests train on these. Each
story is ~100-250 words in the style of TinyStories (Eldan & Li, 2023): a
character (a child or an animal), a friend, a place, a treasured object, a
small problem, a few lines of dialogue, feelings, and a moral. Twelve plots,
each sentence with several phrasings, a few hundred distinct words and more
than 40 random choices per story: millions of distinct stories, yet regular
enough that a tiny GPT learns the language in minutes, and a small sample
can be memorised outright.

Everything is drawn from `random.Random(seed)`, never the global RNG, so a
seed always gives the same stream on every machine.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from gpt2cli.atomic import atomic_path
from gpt2cli.data.sizes import parse_size
from gpt2cli.tokenizer import EOT_TEXT

__all__ = ["iter_stories", "make_story", "parse_size", "write_corpus"]

GIRLS = (
    "Lily", "Mia", "Emma", "Sara", "Anna", "Zoe", "Lucy", "Ella", "Amy", "Rose", "Ruby",
    "Kate", "Nora", "Ivy", "Maya", "Jane", "Molly", "Sophie", "Daisy", "Grace", "Hannah",
    "Chloe", "Layla", "Sue", "Jenny", "Nina", "Clara", "Alice", "Julia", "Tina",
)
BOYS = (
    "Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Luke", "Jake",
    "Owen", "Eli", "Ryan", "Joe", "Dan", "Alex", "Bob", "Kevin", "Timmy", "Billy",
    "Henry", "Oliver", "Jim", "Peter", "Adam", "Theo", "Mark", "Nick", "Paul",
)
# kind: (sound verb, how it moves, one thing it likes to do)
ANIMALS = {
    "dog": ("barked", "ran", "dig in the dirt"),
    "cat": ("meowed", "walked", "nap in the sun"),
    "bunny": ("squeaked", "hopped", "eat carrots"),
    "bird": ("chirped", "flew", "sing songs"),
    "fox": ("yipped", "ran", "chase leaves"),
    "bear": ("growled", "walked", "eat honey"),
    "duck": ("quacked", "waddled", "swim in the pond"),
    "frog": ("croaked", "hopped", "jump on lily pads"),
    "mouse": ("squeaked", "ran", "nibble cheese"),
    "owl": ("hooted", "flew", "look at the stars"),
    "pig": ("oinked", "trotted", "roll in the mud"),
    "cow": ("mooed", "walked", "eat green grass"),
    "horse": ("neighed", "galloped", "run in the field"),
    "lion": ("roared", "walked", "sleep under a tree"),
    "turtle": ("hummed", "crawled", "swim in the river"),
    "squirrel": ("chattered", "climbed", "collect nuts"),
    "sheep": ("baaed", "trotted", "eat soft grass"),
    "goat": ("bleated", "jumped", "climb on rocks"),
    "monkey": ("laughed", "swung", "eat bananas"),
    "puppy": ("yapped", "ran", "play with sticks"),
    "kitten": ("mewed", "pounced", "play with yarn"),
    "elephant": ("trumpeted", "stomped", "splash in the water"),
}
PET_NAMES = (
    "Spot", "Buddy", "Bella", "Whiskers", "Pip", "Coco", "Luna", "Milo", "Fluffy", "Sunny",
    "Benny", "Rosie", "Oscar", "Pepper", "Ziggy", "Biscuit", "Hoppy", "Patch", "Nutmeg", "Tiny",
)
SIZES = ("little", "small", "big", "tiny")
TRAITS = (
    "happy", "kind", "brave", "shy", "curious", "silly", "friendly", "gentle", "clever",
    "sleepy", "cheerful", "playful", "quiet", "busy",
)
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "brown", "shiny", "golden", "soft")
OBJECTS = (
    "ball", "kite", "toy car", "hat", "doll", "teddy bear", "book", "rock", "balloon",
    "boat", "drum", "crayon", "blanket", "cup", "bell", "shell", "truck", "puzzle",
    "scarf", "robot", "train", "yo-yo", "bucket", "whistle", "ribbon", "marble", "box",
)
PLACES = {
    # place: (spots to look, something to do there)
    "park": (("under the slide", "behind a big tree", "near the swings", "in the tall grass"), "play on the swings"),
    "garden": (("under a bush", "behind the flowers", "near the fence", "in a flower pot"), "water the flowers"),
    "forest": (("under a log", "behind a big rock", "near a mushroom", "in a pile of leaves"), "look for pinecones"),
    "beach": (("under the sand", "behind a big rock", "near the water", "in a sand hole"), "build sandcastles"),
    "farm": (("in the hay", "behind the barn", "near the fence", "under the tractor"), "feed the chickens"),
    "river": (("under a stone", "behind the reeds", "near the bridge", "in the mud"), "throw little stones"),
    "meadow": (("in the tall grass", "behind a hill", "near the flowers", "under a tree"), "pick flowers"),
    "playground": (("under the slide", "behind the sandbox", "near the seesaw", "in the sand"), "go down the slide"),
    "lake": (("under the dock", "behind a boat", "near the shore", "in the reeds"), "watch the ducks"),
    "backyard": (("under the table", "behind the shed", "near the fence", "in the grass"), "play catch"),
    "school": (("under a desk", "behind the door", "near the window", "in the toy box"), "draw pictures"),
    "zoo": (("under a bench", "behind a tree", "near the gate", "in a basket"), "see the animals"),
    "hill": (("under a bush", "behind a rock", "near the top", "in the grass"), "roll down the hill"),
    "pond": (("under a leaf", "behind the reeds", "near the water", "in the mud"), "catch frogs"),
}
# How a place is named after "was ..." and "went ...".
AT = {
    "garden": "in the garden", "forest": "in the forest", "farm": "on the farm", "river": "by the river",
    "meadow": "in the meadow", "backyard": "in the backyard", "school": "at school", "hill": "on the hill",
    "pond": "by the pond", "house": "at home", "street": "on the street",
}
TO = {"school": "to school", "house": "home", "farm": "to the farm"}


def at(place: str) -> str:
    return AT.get(place, f"at the {place}")


def to(place: str) -> str:
    return TO.get(place, f"to the {place}")


HOMES = (
    "in a small house near the {place}", "in a big yellow house", "in a little town by the sea",
    "on a quiet street", "in a house with a red door", "near a big green forest", "in a cozy little home",
)
WEATHER = (
    "The sun was shining and the birds were singing.",
    "The sky was blue and the wind was soft.",
    "There were big white clouds in the sky.",
    "The air was warm and the flowers smelled sweet.",
    "It was a bright and happy day.",
    "The leaves on the trees were moving in the wind.",
)
TIMES = (
    "One sunny day", "One day", "One morning", "One afternoon", "One warm day",
    "One windy day", "One bright morning", "One cool evening", "One summer day", "One spring morning",
)
FOODS = ("warm soup", "pancakes", "apple pie", "hot milk", "cookies", "pasta", "a big sandwich", "rice and beans")
GROWNUPS = ("Mom", "Dad", "Grandma", "Grandpa")
GAMES = ("tag", "hide and seek", "catch", "ring around the rosie", "jump rope", "follow the leader")
HAPPY = ("happy", "glad", "excited", "very happy", "so happy", "proud")
SAD = ("sad", "very sad", "upset", "worried", "lonely", "unhappy")
ENDINGS = (
    "They played together until the sun went down.",
    "They laughed and played all day.",
    "It was the best day ever.",
    "Then they went home for a warm dinner.",
    "That night, {he} went to sleep with a big smile.",
    "They had lots of fun together.",
)


class Character:
    """A child or an animal, with the pronouns sentences need."""

    __slots__ = ("name", "kind", "he", "his", "him", "He", "His", "sound", "moves", "likes", "size", "trait")

    def __init__(self, rng: random.Random, animal: bool, girl: bool, avoid: str = "") -> None:
        names = PET_NAMES if animal else (GIRLS if girl else BOYS)
        name = rng.choice(names)
        while name == avoid:
            name = rng.choice(names)
        self.name = name
        self.size = rng.choice(SIZES)
        self.trait = rng.choice(TRAITS)
        if animal:
            self.kind = rng.choice(tuple(ANIMALS))
            self.sound, self.moves, self.likes = ANIMALS[self.kind]
        else:
            self.kind = "girl" if girl else "boy"
            self.sound, self.moves, self.likes = "laughed", "ran", rng.choice(
                ("play outside", "draw pictures", "sing songs", "read books", "dance", "play with blocks")
            )
        self.he, self.his, self.him = ("she", "her", "her") if girl else ("he", "his", "him")
        self.He, self.His = self.he.capitalize(), self.his.capitalize()


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


class _Teller:
    """One story's worth of choices: the cast, the place and the object."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        r = rng.random
        self.hero = Character(rng, animal=r() < 0.3, girl=r() < 0.5)
        self.friend = Character(rng, animal=r() < 0.4, girl=r() < 0.5, avoid=self.hero.name)
        self.place = rng.choice(tuple(PLACES))
        self.spots, self.place_activity = PLACES[self.place]
        self.color = rng.choice(COLORS)
        self.object = rng.choice(OBJECTS)
        self.grownup = rng.choice(GROWNUPS)

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[int(self.rng.random() * len(options))]

    def say(self, who: str, line: str, verb: str = "said") -> str:
        """A line of dialogue, with the speaker named before or after it."""
        if verb == "said" and line.endswith("?"):
            verb = "asked"
        if self.rng.random() < 0.5:
            # '"I lost it," said Tom.' -- a closing full stop becomes a comma.
            if line.endswith("."):
                line = line[:-1] + ","
            return f'"{line}" {verb} {who}.'
        return f'{who} {verb}, "{line}"'

    def intro(self, c: Character) -> str:
        who = f"{_article(c.size)} {c.kind} named {c.name}"
        return self.pick(
            (
                f"Once upon a time, there was {who}.",
                f"There once was {who}.",
                f"Once there was {who} who was very {c.trait}.",
                f"{c.name} was {_article(c.trait)} {c.size} {c.kind}.",
            )
        )

    def opening(self, c: Character) -> list[str]:
        """The intro, then zero to two details about the character's life."""
        lines = [self.intro(c)]
        r = self.rng.random()
        if r < 0.7:
            lines.append(f"{c.He} lived {self.pick(HOMES).format(place=self.place)} with {c.his} family.")
        if r > 0.4:
            lines.append(self.likes(c))
        return lines

    def scene(self, who: str, where: str) -> list[str]:
        """When and where the story happens, sometimes with the weather."""
        lines = [f"{self.pick(TIMES)}, {who} {where}."]
        if self.rng.random() < 0.7:
            lines.append(self.pick(WEATHER))
        return lines

    def describe(self, f: Character) -> str:
        return self.pick(
            (
                f"{f.name} was {_article(f.trait)} {f.kind} who loved to {f.likes}.",
                f"{f.name} was {_article(f.size)} {f.kind} with a big smile.",
                f"{f.name} was a {f.trait} {f.kind}.",
            )
        )

    def likes(self, c: Character) -> str:
        return self.pick(
            (
                f"{c.He} loved to {c.likes}.",
                f"Every day, {c.he} liked to {c.likes}.",
                f"{c.His} favorite thing was to {c.likes}.",
            )
        )

    def thing(self) -> str:
        return f"{self.color} {self.object}"

    def feel(self, c: Character, feelings: tuple[str, ...]) -> str:
        f = self.pick(feelings)
        return self.pick((f"{c.name} felt {f}.", f"{c.He} was {f}.", f"{c.name} was {f}."))

    def evening(self, c: Character) -> list[str]:
        """A closing scene at home, or nothing (40%)."""
        if self.rng.random() < 0.4:
            return []
        g, food = self.grownup, self.pick(FOODS)
        return [
            self.pick((f"That evening, {g} made {food} for dinner.", f"At home, {g} gave {c.name} {food}.")),
            f"{c.name} told {g} all about the day.",
            self.pick((f"{g} listened and smiled.", f"\"What a day!\" said {g}.", f"{g} laughed and gave {c.him} a kiss.")),
            self.pick(("Then it was time for bed.", f"Soon {c.he} was fast asleep.", f"{c.He} was tired but happy.")),
        ]

    def ending(self, c: Character) -> str:
        return self.pick(ENDINGS).format(he=c.he)


def _lost_object(t: _Teller) -> list[list[str]]:
    h, f, thing = t.hero, t.friend, t.thing()
    spots = list(t.spots)
    t.rng.shuffle(spots)
    return [
        [
            *t.opening(h),
            f"{h.He} had {_article(thing)} that {h.he} loved very much.",
            t.pick((f"{h.He} took it everywhere.", f"{h.He} played with it every day.")),
        ],
        [
            *t.scene(h.name, f"went {to(t.place)} with {h.his} {t.object}"),
            f"{h.He} wanted to {t.place_activity}.",
            f"When it was time to go home, the {t.object} was gone!",
            t.feel(h, SAD),
            t.say(h.name, f"Where is my {t.object}?", "cried"),
            f"Just then, {_article(f.kind)} named {f.name} came by.",
            t.say(f.name, f"Why are you {t.pick(('sad', 'crying', 'upset'))}?", "asked"),
            t.say(h.name, f"I lost my {thing}."),
            t.say(f.name, t.pick(("I will help you look!", "Do not worry, we can find it together.", "Let us look for it."))),
            f"They looked {spots[0]}. It was not there.",
            f"They looked {spots[1]}. It was not there too.",
            f"Then {f.name} looked {spots[2]}, and there it was!",
        ],
        [
            f"{h.name} was so happy. {h.He} gave {f.name} a big hug.",
            t.say(h.name, t.pick(("Thank you for helping me!", "Thank you, you are a good friend!")), "said"),
            t.ending(h),
            t.pick(
                (
                    f"{h.name} learned that friends help each other.",
                    f"From that day on, {h.name} and {f.name} were best friends.",
                    "A good friend is there when you need help.",
                )
            ),
        ],
    ]


def _sharing(t: _Teller) -> list[list[str]]:
    h, f, thing = t.hero, t.friend, t.thing()
    giver = t.pick(("mom", "dad", "grandma", "grandpa", "aunt"))
    return [
        [
            *t.opening(h),
            f"{h.His} {giver} gave {h.him} {_article(thing)}.",
            f"{h.name} loved the {t.object} so much.",
        ],
        [
            *t.scene(h.name, f"took the {t.object} {to(t.place)}"),
            f"There {h.he} saw {f.name} the {f.kind}.",
            t.say(f.name, f"Can I play with your {t.object}?", "asked"),
            t.pick((f"{h.name} held the {t.object} tight.", f"{h.name} did not want to share.")),
            t.say(h.name, t.pick(("No, it is mine!", "No, you can not have it.")), "said"),
            f"{f.name} felt {t.pick(SAD)} and sat down all alone.",
            f"{h.name} played with the {t.object}, but it was not fun anymore.",
            t.pick((f"{h.He} felt bad inside.", f"{h.He} did not feel happy.")),
            f"{h.name} walked to {f.name}.",
            t.say(h.name, f"I am sorry. Do you want to play with my {t.object}?"),
            f"{f.name} smiled a big smile.",
            f"They played with the {t.object} together {at(t.place)}.",
        ],
        [
            t.ending(h),
            t.pick(
                (
                    f"{h.name} learned that sharing makes everyone happy.",
                    "Sharing is more fun than playing alone.",
                    f"From that day on, {h.name} always shared {h.his} toys.",
                )
            ),
        ],
    ]


FEARS = (
    # (fear, where, the scary moment, what trying it looks like)
    ("the tall slide", "playground", "looked up at the tall slide", "climbed up and went down the slide"),
    ("the deep water", "lake", "looked at the deep water", "put {his} feet in the water and swam"),
    ("the dark", "house", "looked at the dark room", "walked into the dark room and turned on the light"),
    ("the big dog next door", "street", "saw the big dog", "held out {his} hand to the big dog"),
    ("the loud thunder", "house", "heard the loud thunder", "sat by the window and watched the rain"),
    ("the big waves", "beach", "saw the big waves", "ran into the little waves"),
    ("the high tree", "park", "looked up at the high tree", "climbed up to the first branch"),
)


def _brave(t: _Teller) -> list[list[str]]:
    h = t.hero
    fear, where, moment, attempt = t.pick(FEARS)
    attempt = attempt.format(his=h.his)
    helper = t.grownup
    return [
        [
            *t.opening(h),
            f"But {h.name} was scared of {fear}.",
        ],
        [
            *t.scene(h.name, f"was {at(where)} with {helper}"),
            f"{h.name} {moment}.",
            t.feel(h, ("scared", "very scared", "afraid", "nervous")),
            t.say(h.name, f"I can not do it. I am scared of {fear}."),
            f"{helper} gave {h.him} a hug.",
            t.say(
                helper,
                t.pick(("You are brave. I am right here with you.", "It is okay to be scared. You can try.")),
            ),
            f"{h.name} took a deep breath.",
            f"{h.He} {attempt}.",
            t.pick(("It was not scary at all!", "It was fun!", "It was not so bad!")),
            t.say(h.name, t.pick(("I did it!", "Look, I did it!", "I am not scared anymore!")), "shouted"),
        ],
        [
            t.feel(h, ("proud", "very proud", "happy", "so happy")),
            f"{helper} smiled and said, \"I am proud of you.\"",
            t.pick(
                (
                    f"{h.name} learned that being brave means trying even when you are scared.",
                    "When you are brave, scary things can become fun.",
                    f"From that day on, {h.name} was not scared of {fear}.",
                )
            ),
        ],
    ]


def _new_friend(t: _Teller) -> list[list[str]]:
    h, f = t.hero, t.friend
    game = t.pick(GAMES)
    return [
        [
            *t.opening(h),
            t.pick((f"{h.He} was new in town.", f"{h.He} did not have any friends.", f"{h.He} often played alone.")),
        ],
        [
            *t.scene(h.name, f"went {to(t.place)}"),
            f"{h.He} saw {_article(f.size)} {f.kind} {t.pick(('playing', 'sitting', 'standing'))} all alone.",
            f"{h.name} felt shy, but {h.he} walked over.",
            t.say(h.name, "Hi, my name is " + h.name + ". What is your name?"),
            t.say(f.name, f"My name is {f.name}."),
            t.say(h.name, f"Do you want to play {game}?", "asked"),
            t.say(f.name, t.pick(("Yes, I love that game!", "Yes, let us play!", "Okay!"))),
            f"They played {game} {at(t.place)}.",
            f"{f.name} {f.sound} and {h.name} laughed.",
            t.pick(("They had so much fun.", "The time went by fast.")),
        ],
        [
            t.say(f.name, "Will you come back tomorrow?", "asked"),
            t.say(h.name, "Yes, I will!"),
            t.ending(h),
            t.pick(
                (
                    "Saying hello is the first step to a new friend.",
                    f"{h.name} learned that it is good to be friendly.",
                    f"{h.name} and {f.name} became best friends.",
                )
            ),
        ],
    ]


TROUBLES = (
    # (animal, the trouble, how to help, how it is fixed)
    ("bird", "had a hurt wing", "made a little bed of leaves for it", "the bird could fly again"),
    ("kitten", "was stuck in a tree", "asked {grownup} to get a ladder", "the kitten was safe on the ground"),
    ("puppy", "was lost and cold", "gave it {his} warm blanket", "the puppy found its home"),
    ("duck", "was stuck in the mud", "pulled it out very gently", "the duck swam in the pond again"),
    ("turtle", "was on its back", "turned it over very slowly", "the turtle walked away slowly"),
    ("squirrel", "could not find any nuts", "gave it some nuts from {his} bag", "the squirrel had a full tummy"),
    ("bunny", "was caught in a fence", "opened the fence very carefully", "the bunny hopped away"),
)


def _help_animal(t: _Teller) -> list[list[str]]:
    h = t.hero
    kind, trouble, help_, fixed = t.pick(TROUBLES)
    help_ = help_.format(grownup=t.grownup, his=h.his)
    return [
        t.opening(h),
        [
            *t.scene(h.name, f"was {at(t.place)}"),
            f"{h.He} saw a little {kind}. The {kind} {trouble}.",
            t.feel(h, ("sad", "worried", "sorry for it")),
            t.say(h.name, f"Poor little {kind}. I will help you."),
            f"{h.name} {help_}.",
            f"{h.He} was very gentle and kind.",
            f"After a while, {fixed}.",
            f"The {kind} looked at {h.name} as if to say thank you.",
        ],
        [
            t.feel(h, HAPPY),
            t.pick(
                (
                    f"{h.name} learned that it is good to help animals.",
                    "Being kind to animals is always right.",
                    f"Every day after that, {h.name} looked for the little {kind}.",
                )
            ),
        ],
    ]


RULES = (
    # (the rule, what the child does, what goes wrong)
    ("Do not touch the hot stove", "touched the stove", "It was hot and {his} finger hurt"),
    ("Do not play near the river", "went near the river", "{He} slipped and got all wet"),
    ("Do not eat the cookies before dinner", "ate five cookies", "Soon {his} tummy hurt"),
    ("Do not run in the house", "ran in the house", "{He} bumped into a table and a cup fell down"),
    ("Do not climb the tall fence", "climbed the tall fence", "{He} got stuck at the top"),
    ("Do not go out in the rain", "went out in the rain", "{He} got cold and wet"),
)


def _disobey(t: _Teller) -> list[list[str]]:
    h = t.hero
    rule, did, wrong = t.pick(RULES)
    wrong = wrong.format(his=h.his, He=h.He)
    g = t.grownup
    return [
        [*t.opening(h), f"{h.He} was very {h.trait}, but {h.he} did not always listen."],
        [
            f"{t.pick(TIMES)}, {g} said, \"{h.name}, {rule.lower()[0] + rule[1:]}.\"",
            t.say(h.name, t.pick(("Okay.", "I will not.", "Yes, I know."))),
            f"But when {g} was not looking, {h.name} {did}.",
            f"{wrong}.",
            t.say(h.name, t.pick((f"{g}, help!", "Oh no!", "Ouch!")), "cried"),
            f"{g} came fast and helped {h.him}.",
            t.say(h.name, t.pick(("I am sorry. I did not listen.", "I am sorry. I will listen next time."))),
            f"{g} gave {h.him} a big hug.",
            f"\"{rule} because I want you to be safe,\" {g} said.",
        ],
        [
            t.pick(
                (
                    f"{h.name} learned to listen to {g}.",
                    "It is important to listen to the people who love you.",
                    f"From that day on, {h.name} always listened.",
                )
            ),
        ],
    ]


GOALS = ("the big tree", "the old fence", "the red barn", "the little pond", "the top of the hill", "the swings")


def _race(t: _Teller) -> list[list[str]]:
    h, f = t.hero, t.friend
    goal = t.pick(GOALS)
    return [
        [*t.opening(h), f"{h.His} best friend was {_article(f.kind)} named {f.name}."],
        [
            *t.scene(f"{h.name} and {f.name}", f"were {at(t.place)}"),
            t.say(f.name, f"Let us have a race to {goal}!"),
            t.say(h.name, t.pick(("Ready, set, go!", "Okay, one, two, three, go!"))),
            f"They {t.pick(('ran', 'ran fast', 'ran very fast'))}.",
            f"{h.name} was winning, but then {f.name} fell down.",
            t.say(f.name, "Ouch! My knee hurts!", "cried"),
            f"{h.name} stopped running. {h.He} went back to help {f.name}.",
            t.say(h.name, t.pick(("Are you okay?", "Let me help you up."))),
            f"{h.name} helped {f.name} stand up.",
            f"They walked to {goal} together.",
        ],
        [
            t.say(f.name, "Thank you for helping me. You are a good friend."),
            t.pick(
                (
                    "Helping a friend is better than winning a race.",
                    f"{h.name} learned that friends are more important than winning.",
                    t.ending(h),
                )
            ),
        ],
    ]


BUILDS = (
    # (what, where, what knocks it down)
    ("a big sandcastle", "beach", "a big wave came and washed it away"),
    ("a tall tower of blocks", "house", "the cat jumped on it and it fell down"),
    ("a snowman", "backyard", "the sun came out and it melted a little"),
    ("a fort of pillows", "house", "the dog ran into it and it fell down"),
    ("a little house of sticks", "forest", "the wind blew hard and it fell down"),
    ("a bridge of stones", "river", "the water pushed the stones away"),
)


def _build(t: _Teller) -> list[list[str]]:
    h, f = t.hero, t.friend
    what, where, ruin = t.pick(BUILDS)
    return [
        t.opening(h),
        [
            *t.scene(f"{h.name} and {f.name}", f"were {at(where)}"),
            t.describe(f),
            t.say(h.name, f"Let us build {what}!"),
            t.pick(("They worked very hard.", "They worked for a long time.")),
            "It was the best one they ever made.",
            f"Then {ruin}.",
            t.feel(h, ("sad", "angry", "upset")),
            t.say(h.name, t.pick(("All our work is gone!", "Now we have nothing!")), "cried"),
            t.say(f.name, t.pick(("Do not give up. We can build it again!", "Let us try again. We can make it even better!"))),
            f"So they built {what} again.",
            t.pick(("This time it was even bigger.", "This time it was even better.")),
        ],
        [
            t.feel(h, HAPPY),
            t.pick(
                (
                    "When things go wrong, do not give up.",
                    f"{h.name} learned that you can always try again.",
                    f"{h.name} and {f.name} were proud of their work.",
                )
            ),
        ],
    ]


PLANS = ("go to the park", "have a picnic", "fly a kite", "play in the garden", "go to the beach")
INDOOR = ("paint pictures", "bake cookies", "build a fort", "read a book", "play a game", "make a puppet show")


def _rainy_day(t: _Teller) -> list[list[str]]:
    h, g = t.hero, t.grownup
    plan, indoor = t.pick(PLANS), t.pick(INDOOR)
    return [
        [*t.opening(h), f"{h.He} wanted to {plan} with {g}."],
        [
            f"But when {h.name} looked out the window, it was raining.",
            t.feel(h, SAD),
            t.say(h.name, f"Now we can not {plan}!", "cried"),
            t.say(g, f"Do not be sad. We can {indoor} inside!"),
            f"So {h.name} and {g} decided to {indoor}.",
            t.pick(("It was so much fun.", "They laughed a lot.", "It was more fun than they thought.")),
            t.pick(("Later, the rain stopped.", "After a while, the sun came out.")),
            f"{h.name} saw a big rainbow in the sky.",
            t.say(h.name, "Look, a rainbow!", "shouted"),
        ],
        [
            t.feel(h, HAPPY),
            t.pick(
                (
                    "Even when plans change, you can still have fun.",
                    f"{h.name} learned that a rainy day can be a happy day.",
                    t.ending(h),
                )
            ),
        ],
    ]


GIFTS = (
    ("a card with flowers on it", "paper and crayons"),
    ("a necklace of shells", "shells and string"),
    ("a small cake", "flour, eggs and sugar"),
    ("a picture of the family", "paints and paper"),
    ("a crown of flowers", "flowers from the garden"),
)


def _gift(t: _Teller) -> list[list[str]]:
    h = t.hero
    who = t.pick(("Mom", "Dad", "Grandma", "Grandpa", t.friend.name))
    gift, stuff = t.pick(GIFTS)
    return [
        [*t.opening(h), f"Tomorrow was {who}'s birthday, and {h.name} wanted to make a gift."],
        [
            f"{h.name} got {stuff}.",
            f"{h.He} wanted to make {gift}.",
            t.pick((f"It was hard, and {h.he} made a mess.", "It was not easy.")),
            t.feel(h, ("worried", "upset", "a little sad")),
            t.say(h.name, t.pick(("It is not very good.", "It does not look right."))),
            f"But {h.he} did not give up. {h.He} tried again and again.",
            "At last, the gift was ready.",
            f"The next day, {h.name} gave {who} the gift.",
            t.say(h.name, "Happy birthday! I made it for you."),
            f"{who} smiled a big smile and gave {h.name} a hug.",
            f"\"This is the best gift ever,\" {who} said.",
        ],
        [
            t.feel(h, HAPPY),
            t.pick(
                (
                    "A gift made with love is the best gift of all.",
                    f"{h.name} learned that giving makes you happy too.",
                )
            ),
        ],
    ]


FINDS = (
    ("a shiny key", "opened an old box", "inside were old toys and a map"),
    ("a little egg", "kept it warm", "a baby bird came out of the egg"),
    ("an old map", "followed the map", "it led to a secret garden full of flowers"),
    ("a small door in a tree", "knocked on the door", "a family of mice lived inside"),
    ("a glass bottle", "opened the bottle", "inside was a note that said, be kind"),
)


def _discover(t: _Teller) -> list[list[str]]:
    h, f = t.hero, t.friend
    found, did, surprise = t.pick(FINDS)
    return [
        [*t.opening(h), f"{h.He} was very curious and liked to look at new things."],
        [
            *t.scene(h.name, f"was {at(t.place)} with {f.name}"),
            t.describe(f),
            f"{h.name} found {found} {t.pick(t.spots)}.",
            t.say(h.name, f"{f.name}, look what I found!", "shouted"),
            t.say(f.name, t.pick(("What is it?", "Wow, what is that?")), "asked"),
            t.say(h.name, t.pick(("I do not know. Let us find out!", "Let us see what it does!"))),
            f"So they {did}.",
            f"To their surprise, {surprise}.",
            t.feel(h, ("surprised", "amazed", "excited")),
            t.say(f.name, "This is the best day ever!"),
        ],
        [
            t.ending(h),
            t.pick(
                (
                    "When you are curious, you find wonderful things.",
                    f"{h.name} learned that the world is full of surprises.",
                )
            ),
        ],
    ]


def _tidy(t: _Teller) -> list[list[str]]:
    h, g, thing = t.hero, t.grownup, t.thing()
    return [
        [*t.opening(h), f"{h.His} room was very messy. There were toys everywhere."],
        [
            f"{t.pick(TIMES)}, {h.name} wanted to play with {h.his} {thing}.",
            f"{h.He} looked and looked, but {h.he} could not find it.",
            t.feel(h, ("sad", "upset", "grumpy")),
            t.say(h.name, f"{g}, I can not find my {t.object}!", "cried"),
            t.say(g, "If you clean your room, maybe you will find it."),
            f"So {h.name} put the books on the shelf and the toys in the box.",
            f"Under the bed, {h.he} found the {thing}!",
            t.say(h.name, f"I found my {t.object}!", "shouted"),
        ],
        [
            t.feel(h, HAPPY),
            t.pick(
                (
                    "When you keep your things tidy, you can always find them.",
                    f"{h.name} learned that a clean room is a happy room.",
                    f"From that day on, {h.name} kept {h.his} room clean.",
                )
            ),
        ],
    ]


PLOTS: tuple[Callable[[_Teller], list[list[str]]], ...] = (
    _lost_object, _sharing, _brave, _new_friend, _help_animal, _disobey,
    _race, _build, _rainy_day, _gift, _discover, _tidy,
)


def make_story(rng: random.Random) -> str:
    """One story: paragraphs of sentences, separated by blank lines."""
    teller = _Teller(rng)
    plot = PLOTS[int(rng.random() * len(PLOTS))]
    paragraphs = plot(teller)
    evening = teller.evening(teller.hero)
    if evening:
        # The evening at home goes before the closing line (the moral), in its own paragraph.
        *body, last = paragraphs
        paragraphs = [*body, last[:-1], evening, last[-1:]] if len(last) > 1 else [*body, evening, last]
    return "\n\n".join(" ".join(paragraph) for paragraph in paragraphs)


def iter_stories(seed: int) -> Iterator[str]:
    """An endless, deterministic stream of stories (plain text, no EOT markers)."""
    rng = random.Random(seed)
    while True:
        yield make_story(rng)


def write_corpus(path: str | os.PathLike, n_bytes: int, seed: int = 0) -> int:
    """Write about `n_bytes` of stories to `path` in TinyStories' layout.

    Each story is followed by a line that is exactly `<|endoftext|>`. Stops at
    the first story that reaches `n_bytes`; written under a temporary name and
    renamed. Returns the bytes written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tail = f"\n{EOT_TEXT}\n"
    written = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        stories = iter_stories(seed)
        while written < n_bytes:
            batch = []
            # ~1 MB per write keeps memory flat and the syscalls few.
            batch_bytes = 0
            while written + batch_bytes < n_bytes and batch_bytes < 1 << 20:
                block = (next(stories) + tail).encode("utf-8")
                batch.append(block)
                batch_bytes += len(block)
            fh.write(b"".join(batch))
            written += batch_bytes
    return written
