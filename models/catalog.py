"""What phone-assistant traffic is made of: intents, templates, slot values.

Some base templates are terse on purpose ("{contact}", "{place}", "turn it up")
and belong to more than one intent, as real requests do; they cap the
accuracy any model can reach, so evaluation numbers stay honest.

`TEMPLATES` are the wordings seen before any drift. `NEW_PHRASINGS` share no
template with them and lean on slang, so the `new_phrasing` scenario is a real
shift in wording, not a reshuffle. `APPS` and `NEW_APPS` are disjoint for the
same reason.
"""

from __future__ import annotations

INTENTS: tuple[str, ...] = (
    "open_app",
    "set_alarm",
    "set_timer",
    "set_reminder",
    "send_message",
    "call_contact",
    "navigate",
    "play_music",
    "play_podcast",
    "weather_query",
    "take_photo",
    "toggle_wifi",
    "toggle_bluetooth",
    "adjust_volume",
    "adjust_brightness",
    "check_calendar",
    "search_web",
    "read_news",
    "book_ride",
    "order_food",
    "translate",
    "check_battery",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "open_app": (
        "open {app}",
        "launch {app}",
        "start {app}",
        "bring up {app}",
        "go to {app}",
        "show me {app}",
        "switch to the {app} app",
        "{app}",
    ),
    "set_alarm": (
        "set an alarm for {time}",
        "wake me up at {time}",
        "alarm at {time}",
        "set my alarm to {time} {day}",
        "i need to get up at {time}",
        "create an alarm for {time}",
        "{time}",
    ),
    "set_timer": (
        "set a timer for {duration}",
        "timer {duration}",
        "start a {duration} timer",
        "count down {duration}",
        "remind me in {duration} that the oven is done",
        "put a timer on for {duration}",
        "{duration}",
    ),
    "set_reminder": (
        "remind me to {task} {day}",
        "set a reminder to {task}",
        "don't let me forget to {task}",
        "add a reminder {task} at {time}",
        "make a note to {task} {day}",
    ),
    "send_message": (
        "text {contact} {message}",
        "send a message to {contact} saying {message}",
        "message {contact} {message}",
        "tell {contact} {message}",
        "send {contact} a text on {msg_app}",
        "whatsapp {contact} {message}",
        "{contact}",
    ),
    "call_contact": (
        "call {contact}",
        "ring {contact}",
        "phone {contact}",
        "give {contact} a call",
        "dial {contact}",
        "video call {contact} on {msg_app}",
        "{contact}",
    ),
    "navigate": (
        "navigate to {place}",
        "directions to {place}",
        "take me to {place}",
        "how do i get to {place}",
        "route to {place} avoiding tolls",
        "show the way to {place}",
        "{place}",
    ),
    "play_music": (
        "play {song} by {artist}",
        "play some {genre}",
        "put on {artist}",
        "play music on {music_app}",
        "i want to hear {song}",
        "shuffle my {genre} playlist",
        "{music_app}",
    ),
    "play_podcast": (
        "play the latest episode of {podcast}",
        "resume {podcast}",
        "play {podcast} podcast",
        "next episode of {podcast}",
        "find a podcast about {topic}",
    ),
    "weather_query": (
        "what's the weather in {city}",
        "will it rain {day}",
        "weather forecast for {city}",
        "how hot is it in {city} {day}",
        "do i need an umbrella {day}",
        "is it cold outside",
        "{day}",
    ),
    "take_photo": (
        "take a picture",
        "take a photo",
        "snap a selfie",
        "open the camera and take a shot",
        "take a photo in {seconds} seconds",
        "capture this",
        "camera",
    ),
    "toggle_wifi": (
        "turn on wifi",
        "turn off wifi",
        "switch wifi {onoff}",
        "disable the wifi",
        "enable wireless",
        "connect to wifi",
        "turn it {onoff}",
    ),
    "toggle_bluetooth": (
        "turn on bluetooth",
        "turn off bluetooth",
        "switch bluetooth {onoff}",
        "pair my headphones",
        "enable bluetooth",
        "disconnect bluetooth",
        "turn it {onoff}",
    ),
    "adjust_volume": (
        "turn the volume up",
        "turn it down",
        "set volume to {level} percent",
        "louder please",
        "mute the sound",
        "lower the volume",
        "turn it up",
    ),
    "adjust_brightness": (
        "make the screen brighter",
        "dim the screen",
        "set brightness to {level} percent",
        "turn brightness down",
        "the screen is too dark",
        "increase brightness",
        "turn it down",
    ),
    "check_calendar": (
        "what's on my calendar {day}",
        "do i have any meetings {day}",
        "show my schedule for {day}",
        "when is my next appointment",
        "am i free {day} at {time}",
        "{day}",
    ),
    "search_web": (
        "search for {query}",
        "google {query}",
        "look up {query}",
        "find information about {query}",
        "search the web for {query}",
    ),
    "read_news": (
        "read me the news",
        "what are today's headlines",
        "latest news about {topic}",
        "give me the {topic} news",
        "news briefing please",
    ),
    "book_ride": (
        "get me a ride to {place}",
        "book an {ride_app} to {place}",
        "call a taxi",
        "order a cab to {place}",
        "i need a ride home",
        "{place}",
    ),
    "order_food": (
        "order {food} from {restaurant}",
        "i want to order {food}",
        "get me some {food} on {food_app}",
        "order dinner from {restaurant}",
        "deliver {food} to my place",
    ),
    "translate": (
        "translate {phrase} to {lang}",
        "how do you say {phrase} in {lang}",
        "what is {phrase} in {lang}",
        "translate this into {lang}",
    ),
    "check_battery": (
        "how much battery do i have",
        "battery level",
        "what's my battery at",
        "is my phone charged",
        "check the battery",
    ),
}

NEW_PHRASINGS: dict[str, tuple[str, ...]] = {
    "open_app": ("fire up {app}", "pop {app} open", "yo gimme {app}"),
    "set_alarm": ("buzz me awake {time}", "gotta be up {time} yo", "rouse me {time}"),
    "set_timer": ("ping me after {duration}", "clock {duration} for me", "stopwatch back {duration}"),
    "set_reminder": ("nudge me {day} about {task}", "jot down {task}", "flag {task} for later"),
    "send_message": ("shoot {contact} a dm {message}", "hit up {contact} {message}", "slide into {contact} dms"),
    "call_contact": ("holler at {contact}", "get {contact} on the horn", "buzz {contact}"),
    "navigate": ("whats the fastest way over to {place}", "gps me {place}", "lead me over to {place}"),
    "play_music": ("bump some {genre}", "crank {artist}", "queue up bangers", "drop a beat"),
    "play_podcast": ("keep going with {podcast} pod", "catch up on {podcast}", "spin a pod on {topic}"),
    "weather_query": ("is it gonna pour {day}", "hows it looking out in {city}", "shorts or jacket {day}"),
    "take_photo": ("grab a pic", "say cheese", "freeze this moment", "snap it"),
    "toggle_wifi": ("kill the wlan", "hop on the hotspot", "net {onoff}"),
    "toggle_bluetooth": ("link my buds", "hook up the earbuds", "unlink the headset"),
    "adjust_volume": ("crank it up", "pipe down", "shh", "boost the audio"),
    "adjust_brightness": ("blinding me", "cant see the display", "glow {level}"),
    "check_calendar": ("am i booked {day}", "whats the plan {day}", "any stuff going on {day}"),
    "search_web": ("dig up {query}", "what does the internet say about {query}", "scour for {query}"),
    "read_news": ("whats going down in {topic}", "catch me up on the world", "headlines pls"),
    "book_ride": ("summon a car to {place}", "wheels to {place} asap", "need wheels"),
    "order_food": ("feed me {food}", "grub from {restaurant}", "im starving get {food}"),
    "translate": ("{phrase} but in {lang}", "gimme {lang} for {phrase}", "convert {phrase} into {lang} words"),
    "check_battery": ("juice left", "am i dying", "charge status"),
}

PREFIXES: tuple[str, ...] = ("", "", "", "hey assistant ", "please ", "can you ", "could you ", "ok ")
SUFFIXES: tuple[str, ...] = ("", "", "", " please", " thanks", " now", " right away")

APPS: tuple[str, ...] = (
    "spotify", "whatsapp", "instagram", "gmail", "maps", "youtube", "netflix", "uber",
    "tiktok", "slack", "zoom", "camera", "calculator", "settings", "chrome", "facebook",
    "telegram", "twitter", "outlook", "calendar", "notes", "photos", "clock", "duolingo",
)
NEW_APPS: tuple[str, ...] = (
    "zorblet", "quikpay", "vibely", "threadly", "snapcart", "moodify", "glimmr", "parlo",
    "trekko", "nibblr", "cluey", "wavvy",
)
MSG_APPS: tuple[str, ...] = ("whatsapp", "telegram", "signal", "messenger")
MUSIC_APPS: tuple[str, ...] = ("spotify", "youtube music", "apple music", "deezer")
RIDE_APPS: tuple[str, ...] = ("uber", "lyft", "bolt")
FOOD_APPS: tuple[str, ...] = ("doordash", "ubereats", "deliveroo", "grubhub")

# Contact words vary by locale; the rest of a slot's values are shared.
CONTACTS_BY_LOCALE: dict[str, tuple[str, ...]] = {
    "en_US": ("mom", "dad", "jake", "emily", "the office", "grandma", "sarah", "mike"),
    "en_GB": ("mum", "dad", "oliver", "amelia", "the office", "nan", "harry", "sophie"),
    "en_IN": ("amma", "papa", "rahul", "priya", "the office", "nani", "arjun", "ananya"),
    "en_AU": ("mum", "dad", "jack", "chloe", "the office", "nana", "liam", "mia"),
}
CITIES_BY_LOCALE: dict[str, tuple[str, ...]] = {
    "en_US": ("new york", "chicago", "austin", "seattle", "boston"),
    "en_GB": ("london", "manchester", "leeds", "bristol", "glasgow"),
    "en_IN": ("mumbai", "delhi", "bangalore", "chennai", "pune"),
    "en_AU": ("sydney", "melbourne", "brisbane", "perth", "adelaide"),
}
LOCALES: tuple[str, ...] = ("en_US", "en_GB", "en_IN", "en_AU")
LOCALE_WEIGHTS: tuple[float, ...] = (0.5, 0.2, 0.2, 0.1)
DEVICES: tuple[str, ...] = ("android", "ios", "tablet", "watch")
DEVICE_WEIGHTS: tuple[float, ...] = (0.5, 0.38, 0.07, 0.05)

SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "time": ("7 am", "6:30", "noon", "8 in the morning", "10 pm", "5:45 am", "half past six"),
    "day": ("today", "tomorrow", "tonight", "on monday", "this weekend", "on friday"),
    "duration": ("5 minutes", "ten minutes", "an hour", "30 seconds", "20 min", "half an hour"),
    "task": ("buy milk", "pay rent", "call the dentist", "take my pills", "water the plants",
             "pick up the kids", "send the report"),
    "message": ("i'm running late", "on my way", "see you soon", "call me back",
                "dinner is ready", "happy birthday", "where are you"),
    "place": ("the airport", "home", "work", "the nearest gas station", "central station",
              "the mall", "the hospital", "a coffee shop"),
    "song": ("bohemian rhapsody", "blinding lights", "shape of you", "bad guy", "levitating"),
    "artist": ("taylor swift", "drake", "the beatles", "adele", "ed sheeran", "bts"),
    "genre": ("jazz", "rock", "lofi", "hip hop", "classical", "pop"),
    "podcast": ("the daily", "serial", "radiolab", "huberman lab", "planet money"),
    "topic": ("sports", "technology", "politics", "science", "business", "football"),
    "seconds": ("3", "5", "10"),
    "onoff": ("on", "off"),
    "level": ("20", "50", "75", "100"),
    "query": ("best pizza near me", "how tall is everest", "python tutorials",
              "flight status", "cheap hotels", "symptoms of flu"),
    "food": ("pizza", "sushi", "a burger", "pad thai", "tacos", "biryani"),
    "restaurant": ("dominos", "mcdonalds", "the thai place", "subway", "nandos"),
    "phrase": ("thank you", "where is the station", "good morning", "how much is this"),
    "lang": ("spanish", "french", "german", "hindi", "japanese"),
    "msg_app": MSG_APPS,
    "music_app": MUSIC_APPS,
    "ride_app": RIDE_APPS,
    "food_app": FOOD_APPS,
}

# Slots whose values are app names; the `new_app` scenario swaps these.
APP_SLOTS: frozenset[str] = frozenset({"app", "msg_app", "music_app", "ride_app", "food_app"})
