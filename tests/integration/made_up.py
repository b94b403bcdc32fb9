"""A dataset of intents the generator has never heard of (a wizard's household assistant), made up in code."""

from __future__ import annotations

import random

import pandas as pd

WORDINGS = {
    "feed_the_cat": ["feed the cat", "give the cat its dinner", "the cat is hungry", "put food in the cat bowl",
                     "serve the kitten some fish", "fill the feline dish", "the tabby wants breakfast",
                     "pour kibble for whiskers", "top up the cat food", "give mittens a treat",
                     "the cat needs supper", "open a tin for the cat"],
    "water_the_plants": ["water the plants", "the ferns need water", "sprinkle the garden", "water my herbs",
                         "hydrate the tomatoes", "soak the flower beds", "give the roses a drink",
                         "the basil looks dry", "mist the orchids", "run the garden hose", "fill the watering can",
                         "the cactus is thirsty"],
    "summon_the_dragon": ["summon the dragon", "call the dragon here", "bring me the dragon", "wake the dragon",
                          "whistle for the wyrm", "ring the dragon bell", "fetch my scaly friend",
                          "rouse the beast from the cave", "get the dragon to the tower", "signal the drake",
                          "call smaug over", "the dragon should come now"],
    "brew_a_potion": ["brew a potion", "make me a healing draught", "start the cauldron", "mix an elixir",
                      "boil some newt eyes", "concoct a sleeping tonic", "stir the bubbling pot",
                      "prepare a love philtre", "distill the moon essence", "cook up an invisibility brew",
                      "light the alchemy burner", "blend the herbs into a tincture"],
    "polish_the_armour": ["polish the armour", "shine my helmet", "clean the breastplate", "buff the gauntlets",
                          "scrub the rust off my shield", "oil the chainmail", "make the greaves gleam",
                          "wax the plate armour", "brighten my visor", "remove tarnish from the sword belt",
                          "the cuirass looks dull", "burnish the pauldrons"],
    "oos": ["what is the capital of peru", "tell me a story about ships", "how tall is a giraffe",
            "who won the match yesterday", "what is the square root of nine", "recommend a good novel",
            "how far away is the moon", "explain the stock market", "what year did rome fall",
            "when do swallows migrate", "why is the sky blue", "how many legs does a spider have"],
}
MODIFIERS = ["", "please ", "right now ", "could you ", "quickly ", "I need you to ", "hey wizard "]
SUFFIXES = ["", " now", " please", " tonight", " again", " before noon"]


def made_up(n_per_class: int, seed: int) -> pd.DataFrame:
    """Requests for made-up intents, sorted by label as many datasets ship, no ts and no user ids."""
    rng = random.Random(seed)
    rows = [(rng.choice(MODIFIERS) + rng.choice(wordings) + rng.choice(SUFFIXES), label)
            for label, wordings in sorted(WORDINGS.items()) for _ in range(n_per_class)]
    return pd.DataFrame(rows, columns=["text", "label"])
