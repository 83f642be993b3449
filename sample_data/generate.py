#!/usr/bin/env python3
"""Generate tunedeck's bundled sample dataset.

Writes, next to this script:

* ``notes_tool_use.jsonl`` -- 1,000 synthetic tool-use conversations for a
  personal-notes assistant, in the KTO conversations format
  ``{"conversations": [...], "label": true|false}``, one per line.
* ``tools.json`` -- the JSON schemas of the seven note tools.
* with ``--native``: ``notes_tool_use_native.jsonl`` instead of the first file -- the same
  examples in the ``{"messages": [...], "label": ...}`` form with native tool calls
  (OpenAI-style ``tool_calls`` with ids, ``tool`` results naming their call).

The output is fully deterministic (fixed seed, standard library only): running
the script twice produces byte-identical files. It then validates the file and
prints a summary (the numbers quoted in README.md).

    python sample_data/generate.py [--native]
"""

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

SEED = 20260314
N_TOTAL = 1000
N_BAD = 250
MAX_WORDS = 350
HERE = Path(__file__).resolve().parent
DATA_PATH = HERE / "notes_tool_use.jsonl"
NATIVE_PATH = HERE / "notes_tool_use_native.jsonl"
TOOLS_PATH = HERE / "tools.json"


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

TOOLS = [
    {
        "name": "search_notes",
        "description": "Full-text search over note titles and bodies. Returns matching note paths, titles, tags and a snippet.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Words or phrase to search for."},
                "tag": {"type": "string", "description": "Only return notes carrying this tag (without the leading #)."},
                "limit": {"type": "integer", "description": "Maximum number of results to return (default 10)."},
            },
            "required": ["query"],
        },
    },
    {
        "name": "read_note",
        "description": "Return the full Markdown content, tags and last-modified date of one note.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Note path relative to the vault root, e.g. recipes/sourdough.md."},
            },
            "required": ["path"],
        },
    },
    {
        "name": "create_note",
        "description": "Create a new note. Fails if a note already exists at that path.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Path of the new note, ending in .md."},
                "content": {"type": "string", "description": "Markdown body of the note."},
                "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags for the note (without the leading #)."},
            },
            "required": ["path", "content"],
        },
    },
    {
        "name": "append_to_note",
        "description": "Append text as a new line at the end of an existing note.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Path of an existing note."},
                "text": {"type": "string", "description": "Text to append."},
            },
            "required": ["path", "text"],
        },
    },
    {
        "name": "list_tags",
        "description": "List every tag used in the vault with the number of notes carrying it.",
        "parameters": {"type": "object", "properties": {}, "required": []},
    },
    {
        "name": "daily_note",
        "description": "Open the daily journal note (journal/YYYY-MM-DD.md) for a date, creating it if it does not exist.",
        "parameters": {
            "type": "object",
            "properties": {
                "date": {"type": "string", "description": "Date as YYYY-MM-DD; defaults to today."},
            },
            "required": [],
        },
    },
    {
        "name": "move_note",
        "description": "Move or rename a note.",
        "parameters": {
            "type": "object",
            "properties": {
                "src": {"type": "string", "description": "Current path of the note."},
                "dst": {"type": "string", "description": "New path of the note."},
            },
            "required": ["src", "dst"],
        },
    },
]
TOOL_BY_NAME = {t["name"]: t for t in TOOLS}
TOOL_NAMES = [t["name"] for t in TOOLS]
JSON_TYPES = {"string": str, "integer": int, "array": list}

# ---------------------------------------------------------------------------
# The (imaginary) notes vault
# ---------------------------------------------------------------------------


def _note(path, title, short, tags, keywords, items, summary, fakes, appends, tip, rename, min_day=40):
    return {
        "path": path, "title": title, "short": short, "tags": tags, "keywords": keywords,
        "items": items, "summary": summary, "fakes": fakes, "appends": appends, "tip": tip,
        "rename": rename, "min_day": min_day,
    }


NOTES = [
    _note("projects/garden.md", "Garden plan 2026", "garden", ["home", "garden"],
          ["garden", "tomatoes", "compost", "seedlings"],
          ["Start tomato and pepper seeds indoors mid-March", "Raised bed 2 needs 4 bags of compost",
           "Plant basil next to the tomatoes", "Order a drip irrigation kit before May"],
          "It's your 2026 garden plan: start tomato and pepper seeds indoors mid-March, add 4 bags of compost to raised bed 2, plant basil next to the tomatoes, and order a drip irrigation kit before May.",
          ["It also says to plant garlic along the fence this weekend.",
           "There's also a reminder to buy 12 bags of mulch from the garden centre."],
          ["Buy bone meal", "Check soil pH in bed 1", "Seedlings sprouted, move them to the window"],
          "Tomato seedlings get leggy without enough light; a cheap LED grow light 10 cm above them helps a lot.",
          "projects/vegetable-garden.md"),
    _note("recipes/sourdough.md", "Sourdough loaf", "sourdough", ["recipes", "baking"],
          ["sourdough", "bread", "starter", "baking"],
          ["Feed the starter 1:1:1 the night before", "500 g flour, 375 g water (75% hydration), 10 g salt",
           "Bulk ferment about 5 h at 24 °C with 4 sets of folds", "Bake at 250 °C: 20 min lid on, 20 min lid off"],
          "Your sourdough recipe: feed the starter 1:1:1 the night before, use 500 g flour, 375 g water and 10 g salt (75% hydration), bulk ferment about 5 hours at 24 °C with four sets of folds, then bake at 250 °C for 20 minutes lid on and 20 minutes lid off.",
          ["It also says to add two tablespoons of honey to the dough.",
           "The note recommends a 36-hour cold proof in the fridge."],
          ["Try 10% whole wheat next time", "Loaf on 2026-03-08 was underproofed, extend bulk by 1 h",
           "Buy rice flour for the banneton"],
          "If your sourdough spreads flat, shorten the bulk ferment a little or build more tension when shaping.",
          "recipes/sourdough-loaf.md"),
    _note("recipes/miso-ramen.md", "Miso ramen", "ramen", ["recipes"],
          ["ramen", "miso", "noodles", "recipe"],
          ["Broth: 1 l chicken stock + 3 tbsp white miso + 1 tbsp tahini", "Soft-boiled eggs: 6 min 30 s, then ice bath",
           "Toppings: corn, spring onion, nori, chili oil", "Fresh noodles cook in 90 seconds"],
          "Your miso ramen recipe: a broth of 1 litre chicken stock with 3 tbsp white miso and 1 tbsp tahini, eggs soft-boiled for 6 min 30 s and chilled in ice water, corn, spring onion, nori and chili oil on top, and fresh noodles that cook in 90 seconds.",
          ["It says to simmer the broth with pork bones for 12 hours.",
           "There's also a note to marinate the eggs in mirin overnight."],
          ["Add butter and garlic for the Sapporo-style version", "Sam liked it extra spicy", "Buy more white miso"],
          "For ramen eggs, marinate the peeled soft-boiled eggs in soy sauce and mirin overnight.",
          "recipes/ramen.md"),
    _note("recipes/shakshuka.md", "Shakshuka", "shakshuka", ["recipes"],
          ["shakshuka", "eggs", "brunch", "recipe"],
          ["Soften 1 onion and 1 red pepper in olive oil", "Add 2 garlic cloves, 1 tsp cumin, 1 tsp smoked paprika",
           "Pour in 1 can of tomatoes, simmer 10 min", "Crack in 4 eggs, cover for 6-8 min, finish with feta and parsley"],
          "Your shakshuka recipe: soften an onion and a red pepper in olive oil, add two garlic cloves with cumin and smoked paprika, simmer a can of tomatoes for 10 minutes, then cook four eggs in the sauce, covered, for 6-8 minutes and finish with feta and parsley.",
          ["It also calls for a splash of cream at the end.", "The note says it serves eight people."],
          ["Double the recipe for Sunday brunch", "Try it with harissa", "Serve with sourdough toast"],
          "Shakshuka eggs keep cooking off the heat, so take the pan off when the whites are just set.",
          "recipes/brunch-shakshuka.md"),
    _note("finance/taxes-2025.md", "Taxes 2025", "taxes", ["finance", "home"],
          ["taxes", "tax return", "receipts", "deductions"],
          ["Collect the employer annual statement and bank interest summary", "Home office receipts are in the blue folder",
           "Filing deadline: April 30", "Ask Maria whether the new laptop is deductible"],
          "Your 2025 tax checklist: collect the employer annual statement and the bank interest summary, the home office receipts are in the blue folder, the filing deadline is April 30, and you want to ask Maria whether the new laptop is deductible.",
          ["It also says you're expecting a refund of about €1,200.",
           "There's a note that the accountant meeting is on April 2."],
          ["Download the pension contribution statement", "Maria says the laptop counts as a work expense",
           "Scan the charity donation receipts"],
          "Keeping one folder for receipts through the year makes tax season much faster.",
          "finance/tax-return-2025.md"),
    _note("finance/budget-2026.md", "Budget 2026", "budget", ["finance"],
          ["budget", "savings", "subscriptions", "rent"],
          ["Rent: 1,150/month", "Savings target: 400/month into the travel fund",
           "Subscriptions: streaming 12.99, cloud storage 2.99, gym 35", "Review on the first Sunday of each month"],
          "Your 2026 budget: rent is 1,150 a month, the savings target is 400 a month into the travel fund, subscriptions are streaming (12.99), cloud storage (2.99) and the gym (35), and you review it on the first Sunday of each month.",
          ["It also lists a car payment of 280 a month.", "There's a line saying you've already saved 5,000 this year."],
          ["Cancel the streaming service after March", "Electricity bill went up to 74", "Move 200 extra into savings in April"],
          "A simple rule of thumb for budgets is 50% needs, 30% wants and 20% savings.",
          "finance/budget.md"),
    _note("books/book-club.md", "Book club", "book club", ["books", "social"],
          ["book club", "Remains of the Day", "Priya", "discussion questions"],
          ["Next meeting: Thursday 7 pm at Priya's", "Current book: The Remains of the Day by Kazuo Ishiguro",
           "Question: is Stevens an unreliable narrator?", "I'm bringing snacks, Tom brings wine"],
          "Book club meets Thursday at 7 pm at Priya's. You're reading The Remains of the Day by Kazuo Ishiguro, one discussion question is whether Stevens is an unreliable narrator, and you're bringing snacks while Tom brings wine.",
          ["It also says the next book will be Klara and the Sun.",
           "There's a note that the meeting moved to Sunday at Jonas's place."],
          ["Suggest Piranesi for next month", "Question: what does the ending say about dignity?",
           "Finish chapters 5-6 before Thursday"],
          "Book clubs tend to have better discussions when someone brings two or three open-ended questions.",
          "books/book-club-2026.md"),
    _note("books/reading-list.md", "Reading list", "reading list", ["books"],
          ["reading list", "novels", "to read"],
          ["Piranesi by Susanna Clarke", "The Overstory by Richard Powers", "Four Thousand Weeks by Oliver Burkeman",
           "Finished: Tomorrow, and Tomorrow, and Tomorrow (loved it)"],
          "Your reading list still has Piranesi by Susanna Clarke, The Overstory by Richard Powers and Four Thousand Weeks by Oliver Burkeman, and notes that you finished Tomorrow, and Tomorrow, and Tomorrow and loved it.",
          ["It also lists Project Hail Mary as currently reading.", "There's a note that you gave The Overstory two stars."],
          ["Klara and the Sun by Kazuo Ishiguro", "Recommendation from Lena: The Dispossessed", "Started Piranesi on the train"],
          "Reading 20 pages a day adds up to roughly 25 books a year.",
          "books/to-read.md"),
    _note("health/running-plan.md", "Half marathon plan", "running plan", ["health", "running"],
          ["running", "half marathon", "training plan", "long run"],
          ["Weeks 1-4: three easy 5k runs plus a long run building from 8k to 12k",
           "Weeks 5-8: add intervals on Tuesdays (6 x 400 m)", "Long run peaks at 18k in week 10",
           "Race: Porto half marathon, October 18"],
          "Your half marathon plan: weeks 1-4 are three easy 5k runs plus a long run building from 8k to 12k, weeks 5-8 add Tuesday intervals of 6 x 400 m, the long run peaks at 18k in week 10, and the race is the Porto half marathon on October 18.",
          ["It also schedules a full marathon in December.", "There's a note to run every single day in week 6."],
          ["Week 3 long run: 10k in 58 min", "Buy new running shoes before week 5", "Left knee a bit sore, add a rest day"],
          "Most of your running should feel easy; a good check is whether you can still hold a conversation.",
          "health/half-marathon-plan.md"),
    _note("health/meal-prep.md", "Meal prep", "meal prep", ["health"],
          ["meal prep", "lunches", "groceries"],
          ["Sunday: big batch of lentil curry (4 lunches)", "Roast two trays of vegetables for the week",
           "Overnight oats for weekday breakfasts", "Staples: lentils, rice, spinach, Greek yogurt"],
          "Your meal prep plan: cook a big batch of lentil curry on Sunday for four lunches, roast two trays of vegetables, make overnight oats for weekday breakfasts, and keep lentils, rice, spinach and Greek yogurt stocked.",
          ["It also says to prep fish tacos on Wednesdays.", "There's a note to skip breakfast on weekdays."],
          ["Try a chickpea stew next week", "Buy more meal-prep containers", "Freeze two portions of curry"],
          "Cooked rice and lentils keep about four days in the fridge, so freeze anything you won't eat by then.",
          "health/weekly-meal-prep.md"),
    _note("learning/japanese-vocab.md", "Japanese vocabulary", "Japanese vocab", ["learning", "japanese"],
          ["japanese", "vocabulary", "kanji"],
          ["食べる (taberu): to eat", "飲む (nomu): to drink", "駅 (eki): station", "図書館 (toshokan): library"],
          "Your Japanese vocabulary list has 食べる (taberu, to eat), 飲む (nomu, to drink), 駅 (eki, station) and 図書館 (toshokan, library).",
          ["It also includes 猫 (neko, cat) and 犬 (inu, dog).", "There's a note that you've finished all the N5 kanji."],
          ["切符 (kippu): ticket", "美味しい (oishii): delicious", "毎日 (mainichi): every day"],
          "Spaced repetition, reviewing new words after 1, 3 and 7 days, makes vocabulary stick much better.",
          "learning/japanese-words.md"),
    _note("learning/guitar-practice.md", "Guitar practice", "guitar", ["learning", "music"],
          ["guitar", "chords", "practice routine"],
          ["Warm-up: chromatic exercise at 80 bpm", "Chord changes: G, C, D, one minute each",
           "Learning: Blackbird (first verse)", "Goal: clean barre F by May"],
          "Your guitar routine: a chromatic warm-up at 80 bpm, a minute each of G, C and D chord changes, working on the first verse of Blackbird, with the goal of a clean barre F by May.",
          ["It also says you're learning Stairway to Heaven.", "There's a note that your lesson is every Tuesday with Carlos."],
          ["Moved the metronome up to 90 bpm", "Try the fingerpicking pattern from lesson 4", "Restring the guitar"],
          "Fifteen minutes of daily practice beats one long session a week for building finger strength.",
          "learning/guitar.md"),
    _note("meetings/2026-03-10-product-sync.md", "Product sync 2026-03-10", "product sync", ["work", "meetings"],
          ["product sync", "beta", "release notes", "meeting"],
          ["Attendees: Dana, Omar, Lena", "Decision: ship the beta on April 2",
           "Omar: fix the onboarding crash on Android", "Lena: draft the release notes by Friday"],
          "In the March 10 product sync, Dana, Omar and Lena decided to ship the beta on April 2. Omar will fix the onboarding crash on Android and Lena will draft the release notes by Friday.",
          ["It also says the launch budget was cut by 20%.", "There's an action item for Dana to hire two contractors."],
          ["Dana approved the beta date", "Ask Omar for a status update on Wednesday", "Lena shared the release notes draft"],
          "Ending each meeting by reading back the action items and their owners avoids a lot of confusion later.",
          "meetings/product-sync-2026-03-10.md", min_day=68),
    _note("meetings/2026-03-12-1on1-jonas.md", "1:1 with Jonas 2026-03-12", "Jonas 1:1", ["work", "meetings"],
          ["Jonas", "1:1", "promotion", "meeting"],
          ["Jonas wants to lead the search redesign", "Promotion timeline: review in June",
           "He's overloaded, move the API docs task to Mateo", "Next 1:1: March 26"],
          "In your March 12 1:1, Jonas said he wants to lead the search redesign, you discussed a promotion review in June, agreed to move the API docs task to Mateo because Jonas is overloaded, and the next 1:1 is March 26.",
          ["It also says Jonas asked for a 15% raise.", "There's a note that Jonas is moving to the Berlin office."],
          ["Send Jonas the promotion criteria doc", "Check in on his workload next week", "Jonas finished the search proposal"],
          "Writing down one concrete follow-up per 1:1 makes the next conversation much easier to start.",
          "meetings/jonas-1on1-2026-03-12.md", min_day=70),
    _note("meetings/2026-02-27-design-review.md", "Design review 2026-02-27", "design review", ["work", "meetings"],
          ["design review", "onboarding flow", "Aiko", "meeting"],
          ["Attendees: Aiko, Mateo, Dana", "Aiko presented the new onboarding flow (3 screens instead of 5)",
           "Concern: the skip button is too hard to find", "Mateo: user test with 5 people before March 15"],
          "In the February 27 design review, Aiko showed Mateo and Dana the new onboarding flow with 3 screens instead of 5. The concern was that the skip button is too hard to find, and Mateo will run a user test with 5 people before March 15.",
          ["It also says the team decided to drop the dark mode.", "There's a note that Aiko will present again on March 3."],
          ["User test done: 4 of 5 found the skip button", "Aiko to share the Figma link", "Revisit the colour contrast"],
          "Five users are usually enough for a quick usability test to surface the biggest problems.",
          "meetings/design-review-2026-02-27.md", min_day=57),
    _note("travel/lisbon.md", "Lisbon trip", "Lisbon", ["travel"],
          ["Lisbon", "Portugal", "Sintra", "trip"],
          ["Flights: May 8-14, TAP from Amsterdam", "Staying in Alfama, near Miradouro de Santa Luzia",
           "Ride Tram 28 early to avoid queues", "Day trip to Sintra; pastéis de nata in Belém"],
          "Your Lisbon trip: flights are May 8-14 with TAP from Amsterdam, you're staying in Alfama near Miradouro de Santa Luzia, the plan is to ride Tram 28 early to avoid queues, and there's a day trip to Sintra plus pastéis de nata in Belém.",
          ["It also says you booked a fado show for May 10.", "There's a note that the hotel is in Bairro Alto."],
          ["Book the Sintra train tickets", "Try Time Out Market for lunch", "Pack a light rain jacket"],
          "In Lisbon, a rechargeable Viva Viagem card makes trams, buses and the metro cheaper than single tickets.",
          "travel/lisbon-2026.md"),
    _note("travel/kyoto-2025.md", "Kyoto trip (Nov 2025)", "Kyoto", ["travel", "japanese"],
          ["Kyoto", "temples", "trip"],
          ["Fushimi Inari at 7 am, almost empty", "Favourite: the moss garden at Saihō-ji (book months ahead)",
           "Nishiki Market for lunch", "Next time: stay a night in Arashiyama"],
          "From your Kyoto trip: Fushimi Inari at 7 am was almost empty, your favourite was the moss garden at Saihō-ji (which needs booking months ahead), Nishiki Market was the lunch spot, and next time you want to stay a night in Arashiyama.",
          ["It also says you took a day trip to Hiroshima.", "There's a note that the ryokan cost 300 a night."],
          ["Send Mom the Fushimi Inari photos", "Recommend Saihō-ji to Aiko", "Look up autumn 2026 flights"],
          "Popular temples in Kyoto are far quieter in the first hour after opening.",
          "travel/japan-2025-kyoto.md"),
    _note("ideas/app-ideas.md", "App ideas", "app ideas", ["ideas"],
          ["app ideas", "side project", "habit tracker"],
          ["Habit tracker that asks one question a day", "Shared grocery list sorted by supermarket aisle",
           "Plant-watering reminders based on the weather forecast", "Tiny CLI for daily notes"],
          "Your app ideas: a habit tracker that asks one question a day, a shared grocery list sorted by supermarket aisle, plant-watering reminders based on the weather forecast, and a tiny CLI for daily notes.",
          ["It also says you've started building the habit tracker in Swift.", "There's a note that Omar wants to co-found the grocery app."],
          ["Recipe scaler that converts cups to grams", "Ask Omar if he'd test the grocery list", "Look at existing plant apps"],
          "A good way to test a side-project idea is to fake it by hand for a week before writing any code.",
          "ideas/side-projects.md"),
    _note("ideas/blog-posts.md", "Blog post ideas", "blog ideas", ["ideas", "writing"],
          ["blog", "writing", "drafts"],
          ["What I learned from baking 50 sourdough loaves", "My plain-text notes setup",
           "Training for a first half marathon", "Draft in progress: Lisbon on a budget"],
          "Your blog ideas: what you learned from baking 50 sourdough loaves, your plain-text notes setup, training for a first half marathon, and a draft in progress called Lisbon on a budget.",
          ["It also says the notes-setup post is scheduled for next Monday.", "There's a note that the sourdough post got 2,000 views."],
          ["Post idea: a year of daily notes", "Ask Lena to proofread the notes post", "Add photos to the sourdough draft"],
          "Writing the headline first helps keep a blog post focused on one idea.",
          "ideas/writing-ideas.md"),
    _note("home/apartment-repairs.md", "Apartment repairs", "apartment repairs", ["home"],
          ["repairs", "landlord", "faucet"],
          ["Kitchen faucet leaking, landlord notified on 2026-03-02", "Bathroom fan makes a rattling noise",
           "Replace the hallway bulb (E27, warm white)", "Plumber visit: Tuesday between 9 and 12"],
          "Your repairs list: the kitchen faucet is leaking and the landlord was notified on March 2, the bathroom fan rattles, the hallway bulb needs replacing (E27, warm white), and the plumber is coming Tuesday between 9 and 12.",
          ["It also says the landlord agreed to repaint the living room.", "There's a note that the fridge is broken too."],
          ["Plumber fixed the faucet", "Landlord wants photos of the fan", "Buy two spare E27 bulbs"],
          "Emailing your landlord about repairs, rather than calling, leaves a written record with dates.",
          "home/repairs.md"),
    _note("home/gift-ideas.md", "Gift ideas", "gift ideas", ["home", "ideas"],
          ["gifts", "birthday", "Mom"],
          ["Sam (birthday April 3): ceramic planter or a ramen cookbook", "Mom: framed photo from the Kyoto trip",
           "Priya: a nice notebook for book club", "Budget: about 50 per gift"],
          "Your gift ideas: a ceramic planter or a ramen cookbook for Sam (birthday April 3), a framed Kyoto photo for Mom, a nice notebook for Priya, with a budget of about 50 per gift.",
          ["It also says you already bought Sam's present.", "There's an idea to get Mom concert tickets."],
          ["Dad: a good bread knife", "Sam mentioned wanting a pasta maker", "Wrap Priya's notebook before Thursday"],
          "Keeping a running gift list all year means you're never stuck the week before a birthday.",
          "home/gifts.md"),
    _note("work/okrs-q2.md", "Q2 OKRs", "OKRs", ["work"],
          ["OKRs", "quarterly goals", "Q2"],
          ["O1: launch the beta to 500 users", "KR: onboarding completion above 70%",
           "O2: cut support tickets by 25%", "KR: publish 10 help-center articles"],
          "Your Q2 OKRs: launch the beta to 500 users, with onboarding completion above 70%, and cut support tickets by 25%, with 10 help-center articles published.",
          ["It also has an objective to hire three engineers.", "There's a note that O1 is already 80% done."],
          ["KR: beta NPS above 40", "Check OKR progress with Dana every other Monday", "Draft help-center article list"],
          "Two or three objectives per quarter is usually plenty; more than that and none get real focus.",
          "work/okrs-2026-q2.md"),
    _note("work/onboarding-checklist.md", "Onboarding checklist for Mateo", "onboarding checklist", ["work"],
          ["onboarding checklist", "new hire", "Mateo"],
          ["Laptop and accounts ready by Monday", "Pair Mateo with Lena for the first two weeks",
           "Walk through the deploy process on day 3", "30-day check-in on April 13"],
          "Mateo's onboarding checklist: laptop and accounts ready by Monday, pair him with Lena for the first two weeks, walk through the deploy process on day 3, and a 30-day check-in on April 13.",
          ["It also says Mateo starts in the London office.", "There's a note to give Mateo admin access on day one."],
          ["Add Mateo to the on-call rotation in May", "Order Mateo's second monitor", "Share the architecture overview doc"],
          "A buddy for the first few weeks is one of the most effective things you can give a new hire.",
          "work/onboarding-mateo.md"),
    _note("projects/bike-repair.md", "Bike repair", "bike", ["projects", "home"],
          ["bike", "brakes", "puncture"],
          ["Rear brake pads worn, order Shimano B01S", "Chain needs cleaning and oil",
           "Front tyre: slow puncture, patch or replace", "Bike shop quote for a full service: 85"],
          "Your bike repair list: the rear brake pads are worn (order Shimano B01S), the chain needs cleaning and oil, the front tyre has a slow puncture to patch or replace, and the bike shop quoted 85 for a full service.",
          ["It also says the frame is cracked.", "There's a note that you already ordered new wheels."],
          ["Brake pads arrived", "Patched the front tyre", "Book the full service for April"],
          "A chain cleaned and oiled every few hundred kilometres lasts much longer and shifts better.",
          "projects/bike.md"),
]
NOTE_BY_PATH = {n["path"]: n for n in NOTES}
for _n in NOTES:
    _n["content"] = "# " + _n["title"] + "\n\n" + "\n".join("- " + it for it in _n["items"])

# New notes the user may ask to create.
NEW_NOTES = [
    ("travel/lisbon-packing.md", "Lisbon packing list", ["travel"], ["Passport", "EU plug adapter", "Sunscreen", "Comfortable walking shoes"], "my Lisbon packing list", ["Rain jacket", "Camera charger"]),
    ("ideas/podcast-topics.md", "Podcast topics", ["ideas"], ["Interview a local baker", "How I organise my notes", "Running for beginners"], "podcast topic ideas", ["An episode on Japanese study apps", "Guest idea: Priya"]),
    ("home/sam-birthday.md", "Sam's birthday", ["home"], ["Book a table at Casa Rosa, Saturday 7 pm", "Gift: ceramic planter", "Invite Priya and Jonas"], "planning Sam's birthday", ["Order the cake by Thursday", "Ask Tom to bring a speaker"]),
    ("work/q2-hiring.md", "Q2 hiring plan", ["work"], ["Backend engineer: post the job by April 1", "Ask Dana to join the interview panel", "Budget approved for 2 roles"], "the Q2 hiring plan", ["Draft the take-home exercise", "Reach out to the university job board"]),
    ("learning/japanese-grammar.md", "Japanese grammar", ["learning", "japanese"], ["〜たい: want to (食べたい = I want to eat)", "〜ている: ongoing action", "〜ましょう: let's"], "Japanese grammar points", ["〜てください: please do", "〜から: because"]),
    ("recipes/banana-bread.md", "Banana bread", ["recipes", "baking"], ["3 very ripe bananas", "250 g flour, 100 g brown sugar, 80 g butter", "Bake 55 min at 175 °C"], "my banana bread recipe", ["Add a handful of walnuts", "Cool 20 minutes before slicing"]),
    ("health/stretching.md", "Post-run stretching", ["health", "running"], ["Calf stretch, 30 s each side", "Hip flexor lunge, 30 s each side", "Hamstring stretch on a step"], "a post-run stretching routine", ["Foam roll the quads", "Glute bridge, 2 x 10"]),
    ("meetings/2026-03-16-kickoff.md", "Project kickoff 2026-03-16", ["work", "meetings"], ["Attendees: Mateo, Aiko, Omar", "Goal: new search page by June", "Mateo owns the timeline"], "the kickoff with Mateo, Aiko and Omar", ["Omar to estimate the backend work", "Next check-in: March 23"]),
    ("finance/subscriptions.md", "Subscriptions", ["finance"], ["Streaming: 12.99", "Cloud storage: 2.99", "Gym: 35, cancel in April?"], "tracking my subscriptions", ["Newspaper: 9.99", "Music: 10.99"]),
    ("books/book-club-questions.md", "Book club questions", ["books"], ["Why does Stevens never say what he feels?", "Is the road trip a metaphor?", "What would Miss Kenton say about the ending?"], "questions for book club", ["Would the book work told by Miss Kenton?", "What is the role of the new American employer?"]),
    ("travel/sintra-day-trip.md", "Sintra day trip", ["travel"], ["Train from Rossio, every 20 min", "Pena Palace tickets online", "Lunch in the old town"], "the Sintra day trip", ["Bring a jacket, it's cooler up there", "Quinta da Regaleira in the afternoon"]),
    ("projects/bookshelf.md", "Bookshelf build", ["projects", "home"], ["Pine boards 18 mm, 4 x 80 cm", "Wood glue and 24 screws", "Paint: matte white"], "the bookshelf build", ["Borrow Tom's drill", "Sand before painting"]),
    ("ideas/weekend-ideas.md", "Weekend ideas", ["ideas", "home"], ["Farmers market Saturday morning", "Hike to the lake", "Try the new ramen place"], "things to do this weekend", ["Call Mom on Sunday", "Bake a sourdough loaf"]),
    ("work/retro-2026-03.md", "Sprint retro March", ["work", "meetings"], ["Went well: the beta checklist", "To improve: too many meetings on Wednesday", "Action: no-meeting Wednesday afternoons"], "our March sprint retro", ["Action: rotate who runs standup", "Celebrate the beta launch"]),
    ("health/sleep-log.md", "Sleep log", ["health"], ["Goal: in bed by 23:00", "No screens after 22:30", "Track wake-up time"], "a sleep log", ["Tried magnesium, slept better", "Coffee only before 14:00"]),
    ("learning/spanish-phrases.md", "Spanish phrases", ["learning"], ["¿Dónde está la estación? Where is the station?", "Quisiera un café con leche: I'd like a latte", "La cuenta, por favor: the bill, please"], "Spanish phrases for travelling", ["¿Cuánto cuesta? How much is it?", "Una mesa para dos: a table for two"]),
]

JOURNAL_ENTRIES = [
    "Ran 5k easy before work", "Called Mom about the Lisbon trip", "Fed the sourdough starter",
    "Finished chapter 6 of The Remains of the Day", "Standup: blocked on API keys", "Watered the seedlings",
    "Studied 20 kanji", "Plumber didn't show up, rescheduled", "Lunch with Priya", "Dentist at 15:00",
    "Paid the electricity bill", "Reviewed Lena's release notes", "30 minutes of guitar", "Bought brake pads for the bike",
    "Long run 12k, felt good", "Meal prep: lentil curry", "1:1 with Jonas went well", "Too much coffee, slept badly",
    "Booked the Sintra train", "Cleaned the bike chain", "Wrote 500 words of the Lisbon post", "Grocery run after work",
    "Beta planning with Dana and Omar", "Quiet evening, read Piranesi",
]
JOURNAL_APPENDS = [
    "Call the landlord about the fan", "Ran 8k in the rain", "Ideas for Sam's gift: pasta maker", "Go to bed before 23:00",
    "Reply to Dana about the beta date", "Buy oat milk", "Finished the tax checklist", "Practised 飲む and 食べる",
    "Book club moved to Thursday", "Remember to water the basil", "Lena's onboarding session went well", "Pay back Tom 20",
]
MISS_QUERIES = ["wedding speech", "car insurance", "piano lessons", "passport renewal", "chess openings",
                "wine tasting", "podcast microphone", "Berlin marathon", "dog training", "mortgage"]
TAG_BASE = {"work": 23, "home": 17, "ideas": 12, "recipes": 11, "meetings": 14, "travel": 8, "health": 9,
            "books": 7, "learning": 10, "finance": 6, "running": 5, "japanese": 6, "baking": 5, "garden": 4,
            "projects": 6, "writing": 3, "music": 2, "social": 3}
FAKE_TAGS = ["urgent", "personal", "someday", "archive", "inbox", "important"]
for _n in NOTES:
    for _t in _n["tags"]:
        assert _t in TAG_BASE, _t
for _n in NOTES:
    assert sum(_n["keywords"][0] in m["keywords"] for m in NOTES) == 1, _n["path"]
    for _q in MISS_QUERIES:
        assert _q not in _n["keywords"]

# ---------------------------------------------------------------------------
# Dates (January-March 2026; 2026-01-01 is a Thursday)
# ---------------------------------------------------------------------------

MONTHS = [(1, "January", "Jan", 31), (2, "February", "Feb", 28), (3, "March", "Mar", 31)]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _md(d):
    for m, name, abbr, n in MONTHS:
        if d < n:
            return m, name, abbr, d + 1
        d -= n
    raise ValueError(d)


def iso(d):
    m, _, _, day = _md(d)
    return f"2026-{m:02d}-{day:02d}"


def weekday(d):
    return WEEKDAYS[(3 + d) % 7]


def pretty_date(rng, d):
    m, name, abbr, day = _md(d)
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return rng.choice([
        iso(d), f"{name} {day}, 2026", f"{day} {name} 2026", f"{abbr} {day} 2026", f"{name} {day}{suffix}, 2026",
    ])


def long_date(d):
    _, name, _, day = _md(d)
    return f"{weekday(d)}, {name} {day}"


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

ORD = ["first", "second", "third", "fourth", "fifth"]


def msg(role, content):
    return {"role": role, "content": content}


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def casual(rng, s):
    """Sometimes type like a human in a hurry."""
    if rng.random() < 0.25:
        if s.endswith("."):
            s = s[:-1]
        if s[:1].isupper() and not s.startswith("I ") and not s.startswith("I'"):
            s = s[0].lower() + s[1:]
    return s


def tagstr(tags):
    return ", ".join("#" + t for t in tags)


def basename(path):
    return path.rsplit("/", 1)[-1]


def pick_other_note(rng, exclude=None):
    while True:
        n = rng.choice(NOTES)
        if exclude is None or n["path"] != exclude:
            return n


class Intent:
    """One user request together with the correct tool call, tool result and answer."""

    def __init__(self, kind, user, tool_call, result, answer, desc, note=None, followups=None, info=None):
        self.kind = kind
        self.user = user
        self.call = tool_call
        self.result = result
        self.answer = answer
        self.desc = desc            # "search your notes for ...": used by refusals and rambling
        self.note = note
        self.followups = followups or []
        self.info = info or {}


# ---------------------------------------------------------------------------
# Tool results and answers
# ---------------------------------------------------------------------------


def run_search(q, tag=None, limit=None):
    matches = [n for n in NOTES if q in n["keywords"] and (tag is None or tag in n["tags"])]
    total = len(matches)
    if limit is not None:
        matches = matches[:limit]
    res = {"results": [{"path": n["path"], "title": n["title"], "tags": n["tags"], "snippet": n["items"][0]}
                       for n in matches], "total": total}
    return res, matches


def search_answer(rng, q, tag, matches, total):
    where = f" tagged #{tag}" if tag else ""
    if not matches:
        return rng.choice([
            f"I couldn't find any notes{where} mentioning \"{q}\". Want me to create one?",
            f"No results for \"{q}\"{where} in your notes.",
            f"Nothing matched \"{q}\"{where}. Should I start a new note for it?",
        ])
    if len(matches) == 1:
        n = matches[0]
        return rng.choice([
            f"I found one note about {q}{where}: {n['path']} (\"{n['title']}\"). Want me to open it?",
            f"There's one match: {n['path']}, titled \"{n['title']}\". Should I read it to you?",
            f"Found it: {n['path']} (\"{n['title']}\"). It starts with \"{n['items'][0]}\".",
        ])
    lines = "\n".join(f"- {n['path']} ({n['title']})" for n in matches)
    if total > len(matches):
        head = f"Here are {len(matches)} of the {total} notes matching \"{q}\"{where}:"
    else:
        head = rng.choice([f"I found {len(matches)} notes about {q}{where}:",
                           f"{len(matches)} notes match \"{q}\"{where}:",
                           f"Here's what I found for \"{q}\"{where}:"])
    tail = rng.choice(["", "\nWhich one should I open?", "\nWant me to open one of them?"])
    return head + "\n" + lines + tail


def read_result(rng, ctx, note, path=None, extra_lines=()):
    content = note["content"] + "".join("\n" + e for e in extra_lines)
    today = ctx["today"]
    mod = today if extra_lines else rng.randint(max(note["min_day"], today - 14), today)
    return {"path": path or note["path"], "tags": note["tags"], "modified": iso(mod), "content": content}


def read_answer(rng, note, path, extra_lines=()):
    style = rng.random()
    if style < 0.45 and not extra_lines:
        return rng.choice([f"Here's {path}:\n", f"{path} ({note['title']}):\n", ""]) + note["summary"]
    items = note["items"] + [e[2:] for e in extra_lines]
    head = rng.choice([f"Here's what's in {path}:", f"{note['title']} ({path}):", f"{path} says:"])
    return head + "\n" + "\n".join("- " + it for it in items)


# ---------------------------------------------------------------------------
# Follow-up intents (structure c2: they refer to an earlier tool result)
# ---------------------------------------------------------------------------


def fu_read(rng, ctx, note, ref):
    path = note["path"]
    result = read_result(rng, ctx, note)
    return Intent("read", ref, call("read_note", path=path), result, read_answer(rng, note, path),
                  f"open {path}", note, info={"path": path})


def fu_append(rng, ctx, path, text, user, note=None, journal=False):
    arg = "- " + text
    result = {"ok": True, "path": path, "appended_chars": len(arg) + 1}
    answer = rng.choice([f"Added \"{text}\" to {path}.", f"Done, \"{text}\" is now at the end of {path}.",
                         f"Appended \"{text}\" to {path}."])
    return Intent("append", user, call("append_to_note", path=path, text=arg), result, answer,
                  f"add \"{text}\" to {path}", note, info={"path": path, "text": text, "journal": journal})


def fu_move(rng, ctx, note, src, dst, user):
    result = {"ok": True, "src": src, "dst": dst}
    answer = rng.choice([f"Moved {src} to {dst}.", f"Done: {src} is now {dst}.", f"{src} has been moved to {dst}."])
    return Intent("move", user, call("move_note", src=src, dst=dst), result, answer,
                  f"move {src} to {dst}", note, info={"path": src, "dst": dst})


def move_target(rng, note, src):
    if rng.random() < 0.5:
        return "archive/" + basename(src), True
    return note["rename"], False


def followups_for_notes(ctx, matches):
    """Follow-ups after a search that returned `matches` (a list of notes)."""
    fus = []

    def ref_for(rng, i, one, many, **extra):
        n = matches[i]
        tmpl = rng.choice(one) if len(matches) == 1 else rng.choice(many)
        return tmpl.format(ord=ORD[i], short=n["short"], path=n["path"], **extra)

    def f_read(rng):
        i = rng.randrange(len(matches))
        user = ref_for(rng, i, ["Open it.", "Yes, read it please.", "Show me that one.", "ok open it",
                                "What does it say?"],
                       ["Open the {ord} one.", "Read the {short} one.", "What's in the {ord} one?",
                        "Show me {path}.", "open the {short} note"])
        return fu_read(rng, ctx, matches[i], casual(rng, user))

    def f_append(rng):
        i = rng.randrange(len(matches))
        n = matches[i]
        text = rng.choice(n["appends"])
        user = ref_for(rng, i, ["Add \"{text}\" to it.", "Append this to that note: {text}",
                                "Put \"{text}\" at the bottom of it."],
                       ["Add \"{text}\" to the {ord} one.", "Append \"{text}\" to {path}.",
                        "Put \"{text}\" in the {short} note."], text=text)
        return fu_append(rng, ctx, n["path"], text, casual(rng, user), n)

    def f_move(rng):
        i = rng.randrange(len(matches))
        n = matches[i]
        dst, archive = move_target(rng, n, n["path"])
        if archive:
            user = ref_for(rng, i, ["Move it to the archive.", "Archive that one.", "Please move it into archive/."],
                           ["Archive the {ord} one.", "Move the {short} note to the archive."])
        else:
            user = ref_for(rng, i, ["Rename it to {dst}.", "Move it to {dst}."],
                           ["Rename the {ord} one to {dst}.", "Move {path} to {dst}."], dst=dst)
        return fu_move(rng, ctx, n, n["path"], dst, casual(rng, user))

    if matches:
        fus = [f_read, f_read, f_append, f_move]
    return fus


def followups_for_read(ctx, note, path):
    def f_append(rng):
        text = rng.choice(note["appends"])
        user = rng.choice(["Add \"{t}\" to it.", "Append \"{t}\" at the end.", "Also add: {t}",
                           "Can you add \"{t}\" to that note?"]).replace("{t}", text)
        return fu_append(rng, ctx, path, text, casual(rng, user), note)

    def f_move(rng):
        dst, archive = move_target(rng, note, path)
        if archive:
            user = rng.choice(["Move it to the archive.", "Archive it please.", "OK, move that one into archive/."])
        else:
            user = rng.choice(["Rename it to {d}.", "Move that note to {d}."]).replace("{d}", dst)
        return fu_move(rng, ctx, note, path, dst, casual(rng, user))

    return [f_append, f_append, f_move]


# ---------------------------------------------------------------------------
# Primary intents
# ---------------------------------------------------------------------------

SEARCH_T = ["Find my notes about {q}.", "Do I have any notes on {q}?", "search notes for {q}",
            "Can you look up what I wrote about {q}?", "Where are my {q} notes?",
            "I wrote something about {q} a while ago, can you find it?", "Look for {q} in my notes please.",
            "Any notes mentioning {q}?", "Pull up whatever I have on {q}.", "What notes do I have about {q}?",
            "Search for \"{q}\".", "Is there a note about {q} somewhere?"]
SEARCH_TAG_T = ["Find notes tagged #{tag} that mention {q}.", "Search my #{tag} notes for {q}.",
                "{q}, but only in notes tagged #{tag}, please.", "Look for {q} in #{tag}.",
                "Anything about {q} under the {tag} tag?"]
SEARCH_LIMIT_T = ["Show me up to {n} notes about {q}.", "Give me the top {n} results for {q}.",
                  "Search for {q}, max {n} results.", "Find {q} in my notes, just {n} results please."]
SEARCH_BOTH_T = ["Search #{tag} notes for {q}, {n} results max.", "Up to {n} notes tagged #{tag} about {q}, please."]
NUM_WORDS = {2: "two", 3: "three", 5: "five"}


def gen_search(rng, ctx):
    tag = limit = None
    if rng.random() < 0.18:
        q = rng.choice(MISS_QUERIES)
        if rng.random() < 0.3:
            tag = rng.choice(list(TAG_BASE))
    else:
        note = rng.choice(NOTES)
        q = rng.choice(note["keywords"])
        r = rng.random()
        if r < 0.22:
            tag = rng.choice(note["tags"])
        elif r < 0.38:
            limit = rng.choice([2, 3, 5])
        elif r < 0.44:
            tag = rng.choice(note["tags"])
            limit = rng.choice([2, 3, 5])
    if tag and limit:
        tmpl = rng.choice(SEARCH_BOTH_T)
    elif tag:
        tmpl = rng.choice(SEARCH_TAG_T)
    elif limit:
        tmpl = rng.choice(SEARCH_LIMIT_T)
    else:
        tmpl = rng.choice(SEARCH_T)
    nword = str(limit) if (limit is None or rng.random() < 0.6) else NUM_WORDS[limit]
    user = tmpl.format(q=q, tag=tag, n=nword)
    user = user[0].upper() + user[1:]
    args = {"query": q}
    if tag:
        args["tag"] = tag
    if limit:
        args["limit"] = limit
    result, matches = run_search(q, tag, limit)
    answer = search_answer(rng, q, tag, matches, result["total"])
    return Intent("search", casual(rng, user), {"name": "search_notes", "arguments": args}, result, answer,
                  f"search your notes for \"{q}\"", matches[0] if matches else None,
                  followups_for_notes(ctx, matches), info={"query": q, "tag": tag, "limit": limit, "matches": matches})


READ_T = ["Open {path}.", "What's in {path}?", "Read {path} for me.", "Show me {path}", "can you read me {path}",
          "What did I write in {path}?", "Pull up {path} please.", "Show the contents of {path}."]


def gen_read(rng, ctx, allow_missing=False):
    note = rng.choice(NOTES)
    path = note["path"]
    if allow_missing and rng.random() < 0.2:
        # The user misremembers the path: the right call still uses it, the tool reports the error.
        bad = rng.choice([path.replace(".md", ".txt"), basename(path), "notes/" + basename(path)])
        user = rng.choice(READ_T).format(path=bad)
        result = {"error": f"Note not found: {bad}"}
        answer = rng.choice([f"There's no note at {bad}. Want me to search for \"{note['keywords'][0]}\" instead?",
                             f"I couldn't find {bad}. It may have a different name; should I search your notes for \"{note['keywords'][0]}\"?"])
        return Intent("read_missing", casual(rng, user), call("read_note", path=bad), result, answer,
                      f"open {bad}", note, info={"path": bad})
    user = rng.choice(READ_T).format(path=path)
    result = read_result(rng, ctx, note)
    return Intent("read", casual(rng, user), call("read_note", path=path), result, read_answer(rng, note, path),
                  f"open {path}", note, followups_for_read(ctx, note, path), info={"path": path})


CREATE_PATH_T = ["Create a note at {path} with: {items}.", "New note {path}: {items}",
                 "Make {path} and put this in it: {items}.", "Please create {path} containing {items}."]
CREATE_DESC_T = ["Start a new note for {desc}: {items}.", "Can you make a note with {desc}? {items}.",
                 "I need a note for {desc}: {items}.", "New note please, {desc}. Put in: {items}."]
CREATE_FOLDER_T = ["Create a note called \"{title}\" in {folder}/ with {items}.",
                   "In my {folder} folder, make a note \"{title}\": {items}."]


def gen_create(rng, ctx):
    path, title, tags, items, desc, extras = rng.choice(NEW_NOTES)
    k = rng.randint(2, len(items))
    items = items[:k]
    sep = rng.choice(["; ", ", "]) if not any("," in i for i in items) else "; "
    joined = sep.join(items)
    r = rng.random()
    if r < 0.45:
        user = rng.choice(CREATE_PATH_T).format(path=path, items=joined)
    elif r < 0.8:
        user = rng.choice(CREATE_DESC_T).format(desc=desc, items=joined)
    else:
        user = rng.choice(CREATE_FOLDER_T).format(title=title, folder=path.split("/")[0], items=joined)
    user = user.replace("..", ".").replace("?.", "?")
    args = {"path": path, "content": "# " + title + "\n\n" + "\n".join("- " + i for i in items)}
    use_tags = rng.random() < 0.4
    if use_tags:
        user += rng.choice([" Tag it {t}.", " Tags: {t}", " Add the tags {t}."]).format(t=" ".join("#" + t for t in tags))
        args["tags"] = list(tags)
    result = {"ok": True, "path": path}
    tag_part = f", tagged {tagstr(tags)}" if use_tags else ""
    answer = rng.choice([f"Created {path} with {k} items{tag_part}.",
                         f"Done. Your new note {path} (\"{title}\") has {k} items{tag_part}.",
                         f"I've created {path}{tag_part}. Want to add anything else?"])
    intent = Intent("create", casual(rng, user), {"name": "create_note", "arguments": args}, result, answer,
                    f"create {path}", None, info={"path": path, "title": title, "k": k, "tags": tags, "use_tags": use_tags})

    def f_append(r2):
        x = r2.choice(extras)
        u = r2.choice(["Also add \"{x}\".", "Oh, and add {x} to it.", "Add \"{x}\" to that note too."]).replace("{x}", x)
        return fu_append(r2, ctx, path, x, casual(r2, u))

    intent.followups = [f_append]
    return intent


APPEND_T = ["Add \"{t}\" to {path}.", "append '{t}' to {path}", "Put this at the end of {path}: {t}",
            "In {path}, add a line: {t}", "{path}: add \"{t}\"", "Can you add \"{t}\" to {path}?",
            "Please note \"{t}\" in {path}."]


def gen_append(rng, ctx):
    note = rng.choice(NOTES)
    path = note["path"]
    text = rng.choice(note["appends"])
    user = rng.choice(APPEND_T).format(t=text, path=path)
    intent = fu_append(rng, ctx, path, text, casual(rng, user), note)

    def f_read(r2):
        u = r2.choice(["Show me the whole note now.", "Read it back to me.", "What does the note look like now?"])
        result = read_result(r2, ctx, note, extra_lines=["- " + text])
        return Intent("read", casual(r2, u), call("read_note", path=path), result,
                      read_answer(r2, note, path, ["- " + text]), f"open {path}", note, info={"path": path})

    intent.followups = [f_read]
    return intent


def gen_append_unknown(rng, ctx):
    """The user names a note but not its path: the right first step is to search for it."""
    note = rng.choice(NOTES)
    text = rng.choice(note["appends"])
    ref = rng.choice(["my {s} note", "the {s} note", "my {s} notes"]).format(s=note["short"])
    user = rng.choice(["Add \"{t}\" to {ref}.", "Can you put \"{t}\" in {ref}?", "Append '{t}' to {ref}",
                       "Jot down \"{t}\" in {ref}."]).format(t=text, ref=ref)
    q = note["keywords"][0]
    result, matches = run_search(q)
    path = note["path"]
    answer = rng.choice([f"Your {note['short']} note is {path}. Want me to add \"{text}\" there?",
                         f"I found {path} (\"{note['title']}\"). Should I append \"{text}\" to it?"])
    intent = Intent("append_unknown", casual(rng, user), call("search_notes", query=q), result, answer,
                    f"add \"{text}\" to {ref}", note, info={"text": text, "target": "append", "query": q})

    def f_confirm(r2):
        u = r2.choice(["Yes.", "yes please", "Yep, go ahead.", "Yes, that one.", "Sure, do it."])
        return fu_append(r2, ctx, path, text, u, note)

    intent.followups = [f_confirm]
    return intent


def gen_read_unknown(rng, ctx):
    note = rng.choice(NOTES)
    ref = rng.choice(["my {s} note", "the {s} note", "my notes on {s}"]).format(s=note["short"])
    user = rng.choice(["What did I write in {ref}?", "Open {ref}.", "Read me {ref}.", "What's in {ref} again?",
                       "Can you show me {ref}?"]).format(ref=ref)
    user = user[0].upper() + user[1:]
    q = note["keywords"][0]
    result, matches = run_search(q)
    path = note["path"]
    answer = rng.choice([f"Your {note['short']} note is {path} (\"{note['title']}\"). Want me to open it?",
                         f"I found {path}. Should I read it to you?"])
    intent = Intent("read_unknown", casual(rng, user), call("search_notes", query=q), result, answer,
                    f"open {ref}", note, info={"target": "read", "query": q})

    def f_confirm(r2):
        u = r2.choice(["Yes.", "yes please", "Yep, open it.", "Sure.", "Yes, read it."])
        return fu_read(r2, ctx, note, u)

    intent.followups = [f_confirm]
    return intent


LIST_TAGS_T = ["What tags do I use?", "list my tags", "Which tags are in my notes?", "Show all my tags with counts.",
               "What are my most used tags?", "Remind me what tags I have.", "Give me an overview of my tags."]


def gen_list_tags(rng, ctx):
    counts = {t: max(1, c + rng.randint(-2, 2)) for t, c in TAG_BASE.items()}
    order = sorted(counts, key=lambda t: (-counts[t], t))
    result = {"tags": [{"name": t, "count": counts[t]} for t in order]}
    top = order[:rng.choice([3, 4, 5])]
    top_s = ", ".join(f"#{t} ({counts[t]})" for t in top)
    answer = rng.choice([
        f"You use {len(order)} tags. The most common are {top_s}.",
        f"You have {len(order)} tags. Top ones: {top_s}. The rarest is #{order[-1]} ({counts[order[-1]]}).",
        "Your tags, most used first: " + ", ".join(f"#{t} ({counts[t]})" for t in order) + ".",
    ])
    intent = Intent("list_tags", casual(rng, rng.choice(LIST_TAGS_T)), call("list_tags"), result, answer,
                    "list your tags", None, info={"counts": counts, "order": order})

    def f_search(r2):
        note = r2.choice(NOTES)
        tag = r2.choice(note["tags"])
        kw = r2.choice(note["keywords"])
        u = r2.choice(["Find my {kw} notes tagged #{tag}.", "Search #{tag} for {kw}.", "Which #{tag} notes mention {kw}?"])
        u = u.format(kw=kw, tag=tag)
        res, matches = run_search(kw, tag)
        return Intent("search", casual(r2, u), call("search_notes", query=kw, tag=tag), res,
                      search_answer(r2, kw, tag, matches, res["total"]), f"search your #{tag} notes for \"{kw}\"",
                      note, info={"query": kw, "tag": tag, "limit": None, "matches": matches})

    intent.followups = [f_search]
    return intent


DAILY_TODAY_T = ["Open today's daily note.", "daily note please", "Show me today's journal.", "Pull up my note for today.",
                 "What's in my journal today?", "Open my daily note."]
DAILY_DATE_T = ["Open my daily note for {d}.", "What did I write on {d}?", "Show me the journal entry from {d}.",
                "Pull up my daily note from {d}.", "What's in my journal for {d}?"]
DAILY_YDAY_T = ["What did I write yesterday?", "Open yesterday's daily note.", "Show me yesterday's journal."]


def journal_content(rng, d):
    entries = rng.sample(JOURNAL_ENTRIES, rng.randint(2, 4))
    return entries, "# " + iso(d) + "\n\n" + "\n".join("- " + e for e in entries)


def gen_daily(rng, ctx):
    today = ctx["today"]
    r = rng.random()
    if ctx["sys_date"] and r < 0.25:
        d = today - 1
        user = rng.choice(DAILY_YDAY_T)
        args = {"date": iso(d)}
    elif r < 0.55:
        d = today
        user = rng.choice(DAILY_TODAY_T)
        args = {}
    else:
        d = rng.randint(4, today - 1)
        user = rng.choice(DAILY_DATE_T).format(d=pretty_date(rng, d))
        args = {"date": iso(d)}
    path = f"journal/{iso(d)}.md"
    when = "today" if d == today else long_date(d)
    if d == today and rng.random() < 0.5:
        entries = []
        result = {"path": path, "created": True, "content": f"# {iso(d)}\n"}
        answer = rng.choice([f"Today's note didn't exist yet, so I created {path}. It's empty for now; want to add anything?",
                             f"I created {path} for today. Nothing in it yet."])
    else:
        entries, content = journal_content(rng, d)
        result = {"path": path, "created": False, "content": content}
        head = rng.choice([f"Here's your journal for {when} ({path}):", f"{path}:", f"Your daily note for {when}:"])
        answer = head + "\n" + "\n".join("- " + e for e in entries)
    intent = Intent("daily", casual(rng, user), {"name": "daily_note", "arguments": args}, result, answer,
                    "open your daily note", None, info={"path": path, "entries": entries, "date": d})

    def f_append(r2):
        text = r2.choice(JOURNAL_APPENDS)
        u = r2.choice(["Add \"{t}\" to it.", "Log this: {t}", "Append \"{t}\" to that note."]).replace("{t}", text)
        return fu_append(r2, ctx, path, text, casual(r2, u), journal=True)

    intent.followups = [f_append]
    return intent


MOVE_T = ["Move {src} to {dst}.", "Rename {src} to {dst}", "Please move {src} to {dst}.", "mv {src} {dst}",
          "Can you rename {src} as {dst}?"]
ARCHIVE_T = ["Archive {src}.", "Move {src} into the archive folder.", "Put {src} in archive/ please."]


def gen_move(rng, ctx):
    note = rng.choice(NOTES)
    src = note["path"]
    dst, archive = move_target(rng, note, src)
    tmpl = rng.choice(ARCHIVE_T) if archive and rng.random() < 0.6 else rng.choice(MOVE_T)
    intent = fu_move(rng, ctx, note, src, dst, casual(rng, tmpl.format(src=src, dst=dst)))

    def f_read(r2):
        u = r2.choice(["Open it.", "Now show me what's in it.", "Read {d} please."]).replace("{d}", dst)
        result = read_result(r2, ctx, note, path=dst)
        return Intent("read", casual(r2, u), call("read_note", path=dst), result, read_answer(r2, note, dst),
                      f"open {dst}", note, info={"path": dst})

    intent.followups = [f_read]
    return intent


PRIMARY = [  # (generator, weight)
    (gen_search, 20), (gen_read, 12), (gen_create, 14), (gen_append, 13), (gen_append_unknown, 5),
    (gen_read_unknown, 4), (gen_list_tags, 6), (gen_daily, 14), (gen_move, 9),
]


def gen_primary(rng, ctx, need=None):
    """Draw a primary intent; `need` is an optional predicate it must satisfy."""
    gens = [g for g, _ in PRIMARY]
    weights = [w for _, w in PRIMARY]
    for _ in range(200):
        g = rng.choices(gens, weights)[0]
        it = g(rng, ctx, allow_missing=True) if (g is gen_read and ctx.get("allow_missing")) else g(rng, ctx)
        if need is None or need(it):
            return it
    raise RuntimeError("could not satisfy intent constraint")


# ---------------------------------------------------------------------------
# Conversation furniture
# ---------------------------------------------------------------------------

SYSTEM_PROMPTS = [
    "You are a notes assistant. Call a tool by replying with a JSON object {\"name\", \"arguments\"}. Available tools: search_notes, read_note, create_note, append_to_note, list_tags, daily_note, move_note.",
    "You help the user manage a folder of Markdown notes. To call a tool, reply with only a JSON object like {\"name\": \"search_notes\", \"arguments\": {\"query\": \"...\"}}.",
    "You are a concise personal-notes assistant. Use the note tools (search_notes, read_note, create_note, append_to_note, list_tags, daily_note, move_note) whenever the user asks about their notes.",
    "You are the assistant for the user's personal knowledge base. When a tool is needed, answer with a single JSON object {\"name\": ..., \"arguments\": {...}} and nothing else.",
    "You manage the user's notes vault. Prefer calling a tool over guessing, and never invent note paths.",
    "Personal notes assistant. Tool calls are one JSON object with \"name\" and \"arguments\"; after a tool result, answer briefly in plain language.",
]

CHITCHAT = [
    ("hi! can you help me with my notes?", "Of course. I can search, read, create, append to and move notes, list your tags, and open your daily note. What do you need?"),
    ("Good morning", "Good morning! What can I do for your notes today?"),
    ("I'm trying to get more organised this week.", "Happy to help with that. Tell me what you'd like to find, write down or tidy up."),
    ("Just got back from a 10k run!", "Nice work on the 10k! Anything you want me to note down?"),
    ("What's the difference between a tag and a folder?", "A folder is where a note lives, and each note is in exactly one. Tags like #work or #ideas are labels, and a note can have several, so they're handy for topics that cut across folders."),
    ("How are my daily notes named?", "Daily notes use the date as the file name, like journal/2026-03-14.md, so they sort chronologically."),
    ("thanks for the help yesterday", "You're welcome! What's next?"),
    ("Is it a good idea to keep recipes in my notes?", "Definitely. One note per recipe in a recipes/ folder works well, and tags like #baking make them easy to find later."),
    ("Can you remind me what you can do?", "I can search your notes, read a note, create new ones, append to existing notes, list your tags, open a daily note, and move or rename notes."),
    ("I have a busy week with work stuff", "Sounds like a lot. I can help you keep track: want to jot something down or look something up?"),
    ("hey", "Hey! What do you need from your notes?"),
    ("I keep forgetting where I put things.", "That's what search is for. Give me a word or a topic and I'll look through your notes."),
    ("Should I write things down as bullet points or paragraphs?", "Bullet points are easier to scan and to append to later; paragraphs are nicer for journaling. Most of your notes use bullets."),
    ("ok, one more thing", "Sure, go ahead."),
]

GENERIC_OFFTOPIC = [
    "Sounds like you're busy! Remember to take breaks; a short walk can really help you focus.",
    "Have you tried the Pomodoro technique? Work for 25 minutes, then take a 5-minute break.",
    "Great idea to keep notes! Many people find that a weekly review helps them stay on top of things.",
    "A simple way to organise notes is one folder per area of your life, plus tags for status.",
    "Fun fact: the word \"journal\" comes from the French word for \"day\".",
    "If you're feeling overwhelmed, try writing down the three most important things for today.",
]

REFUSALS = [
    "I'm sorry, but I don't have access to your notes, so I can't {desc}.",
    "As an AI, I'm not able to {desc}. You could do it in your notes app instead.",
    "Unfortunately I can't {desc}; I don't have access to your files. Is there anything else I can help with?",
    "For privacy reasons I can't {desc}.",
    "I can't {desc}, since I can't see or edit files on your device. Your editor's built-in tools should let you do it.",
    "Sorry, I'm unable to {desc}. I only have general knowledge and can't read personal documents.",
    "I'm afraid that's not something I can do. I can't {desc}, but I'm happy to give general advice on note-taking.",
]

RAMBLE_OPEN = ["Great question!", "Sure, I'd be happy to help with that!", "Absolutely, let's think this through.",
               "Good idea! Before doing anything, let me walk through the options."]
RAMBLE_MID = [
    "There are a few different ways we could approach this, and each has its own trade-offs.",
    "One option would be to use the search_notes tool, but it might also make sense to list your tags first so we understand how your notes are organised.",
    "Of course, people structure their notes very differently: some prefer deep folder hierarchies, others keep everything flat and rely on tags and links.",
    "It's also worth considering whether this belongs in an existing note or a brand-new one, since keeping related information together makes it easier to find later.",
    "I want to make sure I get this exactly right, so I'd rather explain the plan before touching anything.",
    "Once we've settled on an approach, I could call the appropriate tool with the right arguments.",
    "Many productivity experts recommend a weekly review of your notes, which could be a good habit to pair with this.",
    "We should also think about naming conventions, because consistent file names make everything easier down the line.",
]
RAMBLE_CLOSE = ["Would you like me to go ahead?", "Let me know how you'd like to proceed!",
                "Just say the word and I'll get started.", "Which approach sounds best to you?"]


# ---------------------------------------------------------------------------
# Undesirable completions
# ---------------------------------------------------------------------------

BAD_TYPES = ["wrong_tool", "malformed_json", "missing_required_args", "bad_arguments", "ignored_request",
             "needless_refusal", "verbose_rambling", "hallucinated_content"]
CALL_ERRORS = {"wrong_tool", "malformed_json", "missing_required_args", "bad_arguments"}


def bad_wrong_tool(rng, intent, prior):
    c = intent.call
    name, a = c["name"], c["arguments"]
    if intent.kind in ("append_unknown", "read_unknown"):
        return None  # a search is the right first step; "wrong" alternatives would be bad_arguments
    if name == "search_notes":
        opts = [call("list_tags"), call("daily_note"),
                call("create_note", path="notes/" + a["query"].lower().replace(" ", "-") + ".md", content="")]
    elif name == "read_note":
        opts = [call("create_note", path=a["path"], content=""), call("daily_note"), call("list_tags")]
    elif name == "create_note":
        opts = [call("read_note", path=a["path"]), call("list_tags"), call("append_to_note", path=a["path"], text=a["content"])]
    elif name == "append_to_note":
        opts = [call("create_note", path=a["path"], content=a["text"]), call("read_note", path=a["path"])]
    elif name == "list_tags":
        opts = [call("search_notes", query="tags"), call("daily_note")]
    elif name == "daily_note":
        opts = [call("list_tags"), call("search_notes", query=a.get("date", "today"))]
        if "date" in a:
            opts.append(call("create_note", path=f"journal/{a['date']}.md", content=""))
    elif name == "move_note":
        opts = [call("create_note", path=a["dst"], content=""), call("read_note", path=a["src"]),
                call("append_to_note", path=a["dst"], text=a["src"])]
    else:
        return None
    return dumps(rng.choice(opts)), None


def bad_malformed(rng, intent, prior):
    c = intent.call
    s = dumps(c)
    variants = ["missing_brace", "single_quotes", "trailing_comma", "unquoted_keys", "truncated", "prose_prefix"]
    v = rng.choice(variants)
    if v == "missing_brace":
        out = s[:-1]
    elif v == "single_quotes":
        out = str(c)
    elif v == "trailing_comma":
        out = s[:-2] + ",}}" if c["arguments"] else s[:-1] + ",}"
    elif v == "unquoted_keys":
        args = ", ".join(f"{k}: {dumps(val)}" for k, val in c["arguments"].items())
        out = "{name: " + dumps(c["name"]) + ", arguments: {" + args + "}}"
    elif v == "truncated":
        if len(s) < 40:
            return None
        out = s[: int(len(s) * rng.uniform(0.55, 0.85))]
    else:
        out = rng.choice(["Sure! ", "Okay, calling the tool now: ", "Here you go:\n"]) + s + rng.choice(["", " Let me know if that works."])
    try:
        obj = json.loads(out)
        if isinstance(obj, dict) and "name" in obj:
            return None
    except ValueError:
        pass
    return out, v


def bad_missing_args(rng, intent, prior):
    c = intent.call
    req = TOOL_BY_NAME[c["name"]]["parameters"]["required"]
    if not req:
        return None
    v = rng.choice(["drop_one", "drop_one", "empty_arguments", "no_arguments_key"])
    if v == "drop_one":
        drop = rng.choice(req)
        args = {k: val for k, val in c["arguments"].items() if k != drop}
        out = {"name": c["name"], "arguments": args}
    elif v == "empty_arguments":
        out = {"name": c["name"], "arguments": {}}
    else:
        out = {"name": c["name"]}
        if rng.random() < 0.5:
            out.update({k: val for k, val in c["arguments"].items() if k not in req[:1]})
    return dumps(out), v


def invented_paths(note_or_path):
    p = note_or_path if isinstance(note_or_path, str) else note_or_path["path"]
    b = basename(p)
    stem = b[:-3]
    folder = p.rsplit("/", 1)[0] if "/" in p else "notes"
    return [b, "notes/" + b, p[:-3] + ".txt", f"{folder}/{stem}-notes.md", stem.split("-")[0] + ".md",
            f"{folder}/my-{stem}.md", f"Notes/{stem.title()}.md"]


def bad_arguments(rng, intent, prior):
    c = intent.call
    name, a = c["name"], dict(c["arguments"])
    options = []
    # (1) invented note paths
    if intent.kind in ("append_unknown", "read_unknown") and intent.note:
        cands = [p for p in invented_paths(intent.note) if p not in prior]
        if cands:
            p = rng.choice(cands)
            if intent.info["target"] == "append":
                options.append((call("append_to_note", path=p, text="- " + intent.info["text"]), "invented_path"))
            else:
                options.append((call("read_note", path=p), "invented_path"))
    key = "src" if name == "move_note" else "path"
    if name in ("read_note", "append_to_note", "move_note") and a.get(key, "") in prior:
        cands = [p for p in invented_paths(a[key]) if p not in prior]
        if cands:
            b = dict(a)
            b[key] = rng.choice(cands)
            options.append(({"name": name, "arguments": b}, "invented_path"))
    # (2) wrong argument types / formats
    if name == "search_notes":
        b = dict(a)
        if "limit" in b:
            b["limit"] = rng.choice([str(b["limit"]), NUM_WORDS[b["limit"]]])
        else:
            b["query"] = a["query"].split()
        options.append(({"name": name, "arguments": b}, "wrong_type"))
    elif name == "create_note":
        b = dict(a)
        if "tags" in b:
            b["tags"] = " ".join("#" + t for t in a["tags"])
        else:
            b["content"] = [line for line in a["content"].split("\n") if line]
        options.append(({"name": name, "arguments": b}, "wrong_type"))
    elif name == "daily_note" and "date" in a:
        d = a["date"]
        m, day = int(d[5:7]), int(d[8:10])
        b = {"date": rng.choice([f"{MONTHS[m - 1][1]} {day}", f"{day}/{m}/2026", int(d.replace("-", ""))])}
        options.append(({"name": name, "arguments": b}, "wrong_type"))
    elif name in ("read_note", "append_to_note"):
        b = dict(a)
        if name == "append_to_note" and rng.random() < 0.5:
            b["text"] = [a["text"]]
        else:
            b["path"] = [a["path"]]
        options.append(({"name": name, "arguments": b}, "wrong_type"))
    if not options:
        return None
    obj, v = rng.choice(options)
    return dumps(obj), v


def offtopic(rng, intent):
    exclude = intent.note["path"] if intent.note else None
    if rng.random() < 0.55:
        tip = pick_other_note(rng, exclude)["tip"]
        return rng.choice(["{t}", "Quick tip: {t}", "By the way, {t0}{t1}", "Here's something useful: {t}"]).format(
            t=tip, t0=tip[0].lower(), t1=tip[1:])
    return rng.choice(GENERIC_OFFTOPIC)


def bad_ignored(rng, intent, prior):
    return offtopic(rng, intent), None


def bad_refusal(rng, intent, prior):
    return rng.choice(REFUSALS).format(desc=intent.desc), None


def bad_rambling(rng, intent, prior):
    mids = rng.sample(RAMBLE_MID, rng.randint(3, 4))
    text = " ".join([rng.choice(RAMBLE_OPEN), f"So you'd like me to {intent.desc}."] + mids + [rng.choice(RAMBLE_CLOSE)])
    return text, None


def bad_hallucinated(rng, intent, prior):
    k = intent.kind
    if k == "read":
        sep = "\n" if "\n" in intent.answer else " "
        return intent.answer + sep + rng.choice(intent.note["fakes"]), "read"
    if k == "search":
        matches, q, tag = intent.info["matches"], intent.info["query"], intent.info["tag"]
        if not matches:
            slug = q.lower().replace(" ", "-")
            return rng.choice([
                f"I found your {q} note at notes/{slug}.md. It has a few entries from last month.",
                f"Yes! There's {slug}.md in your ideas folder with three bullet points about {q}.",
            ]), "search_empty"
        fake_path = rng.choice(invented_paths(matches[0])[1:])
        lines = "\n".join(f"- {n['path']} ({n['title']})" for n in matches)
        lines += f"\n- {fake_path} ({matches[0]['title']}, older version)"
        return f"I found {len(matches) + 1} notes about {q}:\n" + lines, "search_extra"
    if k in ("append_unknown", "read_unknown"):
        n = intent.note
        return (f"Your {n['short']} note is {n['path']}. " + rng.choice(n["fakes"])), "search_content"
    if k == "daily":
        entries = intent.info["entries"]
        path = intent.info["path"]
        fakes = [e for e in JOURNAL_ENTRIES if e not in entries]
        added = rng.sample(fakes, 2)
        if not entries:
            return f"Here's {path}:\n" + "\n".join("- " + e for e in added), "daily_empty"
        allent = entries + added
        return f"Here's {path}:\n" + "\n".join("- " + e for e in allent), "daily_extra"
    if k == "list_tags":
        counts, order = intent.info["counts"], intent.info["order"]
        ft = rng.choice(FAKE_TAGS)
        fc = counts[order[0]] + rng.randint(3, 9)
        top = ", ".join(f"#{t} ({counts[t]})" for t in order[:3])
        return f"You use {len(order) + 1} tags. The most common is #{ft} ({fc}), followed by {top}.", "tags"
    if k == "create":
        p = intent.info["path"]
        return rng.choice([
            f"Created {p} with {intent.info['k'] + 2} items, tagged it #important and set a reminder for tomorrow at 9:00.",
            f"Done! {p} is created and I've linked it from your daily note and shared it with Dana.",
        ]), "create"
    if k == "append":
        p = intent.info["path"]
        return rng.choice([
            f"Added \"{intent.info['text']}\" to {p}. The note now has 12 entries, the oldest from last January.",
            f"Appended it to {p}, right under the line about the dentist appointment.",
        ]), "append"
    if k == "move":
        return (f"Moved {intent.info['path']} to {intent.info['dst']} and updated the 4 notes that linked to it."), "move"
    return None


BAD_FNS = {
    "wrong_tool": bad_wrong_tool, "malformed_json": bad_malformed, "missing_required_args": bad_missing_args,
    "bad_arguments": bad_arguments, "ignored_request": bad_ignored, "needless_refusal": bad_refusal,
    "verbose_rambling": bad_rambling, "hallucinated_content": bad_hallucinated,
}

# ---------------------------------------------------------------------------
# Example assembly
# ---------------------------------------------------------------------------

STRUCT_WEIGHTS_GOOD = {"a": 28, "b": 40, "c1": 14, "c2": 18}
STRUCT_FOR_BAD = {
    "wrong_tool": {"a": 45, "c1": 20, "c2": 35},
    "malformed_json": {"a": 45, "c1": 20, "c2": 35},
    "missing_required_args": {"a": 45, "c1": 20, "c2": 35},
    "bad_arguments": {"a": 45, "c1": 15, "c2": 40},
    "ignored_request": {"a": 35, "b": 35, "c1": 15, "c2": 15},
    "needless_refusal": {"a": 50, "c1": 20, "c2": 30},
    "verbose_rambling": {"a": 50, "c1": 20, "c2": 30},
    "hallucinated_content": {"b": 100},
}


def wchoice(rng, weights):
    keys = list(weights)
    return rng.choices(keys, [weights[k] for k in keys])[0]


def build_example(rng, good, bad_type):
    """Return (conversation, meta) or None if this draw doesn't fit the requested error type."""
    struct = wchoice(rng, STRUCT_WEIGHTS_GOOD if good else STRUCT_FOR_BAD[bad_type])
    today = rng.randint(72, 85)  # 2026-03-14 .. 2026-03-27
    use_sys = rng.random() < 0.4
    sys_date = use_sys and rng.random() < 0.4
    ctx = {"today": today, "sys_date": sys_date, "allow_missing": struct == "b"}
    conv = []
    if use_sys:
        sp = rng.choice(SYSTEM_PROMPTS)
        if sys_date:
            sp += f" Today is {weekday(today)}, {iso(today)}."
        conv.append(msg("system", sp))

    if struct == "a":
        intent = gen_primary(rng, ctx)
        conv.append(msg("user", intent.user))
        completion = "call"
    elif struct == "b":
        if rng.random() < 0.15:
            u, a = rng.choice(CHITCHAT)
            conv += [msg("user", u), msg("assistant", a)]
        if bad_type == "hallucinated_content":
            intent = gen_primary(rng, ctx, need=lambda it: it.kind in
                                 ("read", "search", "daily", "list_tags", "append_unknown", "read_unknown")
                                 or rng.random() < 0.35)
        else:
            intent = gen_primary(rng, ctx)
        conv += [msg("user", intent.user), msg("assistant", dumps(intent.call)), msg("tool", dumps(intent.result))]
        completion = "answer"
    elif struct == "c1":
        u, a = rng.choice(CHITCHAT)
        intent = gen_primary(rng, ctx)
        conv += [msg("user", u), msg("assistant", a), msg("user", intent.user)]
        completion = "call"
    else:  # c2
        first = gen_primary(rng, ctx, need=lambda it: bool(it.followups))
        conv += [msg("user", first.user), msg("assistant", dumps(first.call)), msg("tool", dumps(first.result)),
                 msg("assistant", first.answer)]
        intent = rng.choice(first.followups)(rng)
        conv.append(msg("user", intent.user))
        completion = "call"

    prior = "\n".join(m["content"] for m in conv)
    variant = None
    if good:
        final = dumps(intent.call) if completion == "call" else intent.answer
    else:
        out = BAD_FNS[bad_type](rng, intent, prior)
        if out is None:
            return None
        final, variant = out
    conv.append(msg("assistant", final))
    meta = {"struct": struct, "system": use_sys, "kind": intent.kind, "completion": completion, "variant": variant}
    return conv, meta


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def parse_call(s):
    """Return the parsed call if `s` is a valid tool call for one of TOOLS, else an error string."""
    try:
        obj = json.loads(s)
    except ValueError:
        return "not JSON"
    if not isinstance(obj, dict) or set(obj) != {"name", "arguments"}:
        return "not a {name, arguments} object"
    tool = TOOL_BY_NAME.get(obj["name"])
    if tool is None:
        return "unknown tool"
    args = obj["arguments"]
    if not isinstance(args, dict):
        return "arguments not an object"
    props = tool["parameters"]["properties"]
    for r in tool["parameters"]["required"]:
        if r not in args:
            return f"missing {r}"
    for k, v in args.items():
        if k not in props:
            return f"unknown argument {k}"
        t = JSON_TYPES[props[k]["type"]]
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            return f"bad type for {k}"
        if t is list and not all(isinstance(x, str) for x in v):
            return f"bad item type for {k}"
    if "date" in args and not (len(args["date"]) == 10 and args["date"][4] == "-" and args["date"][7] == "-"):
        return "bad date format"
    return obj


def is_call_turn(conv, i):
    m = conv[i]
    if m["role"] != "assistant":
        return False
    nxt = conv[i + 1] if i + 1 < len(conv) else None
    return (nxt is not None and nxt["role"] == "tool") or (nxt is None and m["content"].lstrip().startswith("{"))


def validate(lines, metas):
    problems = []
    seen = set()
    for ln, (line, meta) in enumerate(zip(lines, metas), 1):
        obj = json.loads(line)
        if list(obj) != ["conversations", "label"] or not isinstance(obj["label"], bool):
            problems.append((ln, "top-level keys"))
        conv = obj["conversations"]
        if conv[-1]["role"] != "assistant":
            problems.append((ln, "last turn not assistant"))
        for i, m in enumerate(conv):
            if list(m) != ["role", "content"] or m["role"] not in ("system", "user", "assistant", "tool"):
                problems.append((ln, "bad turn"))
            if m["role"] == "system" and i != 0:
                problems.append((ln, "system not first"))
            if m["role"] == "tool" and conv[i - 1]["role"] != "assistant":
                problems.append((ln, "tool not after assistant"))
        if line in seen:
            problems.append((ln, "duplicate"))
        seen.add(line)
        last = len(conv) - 1
        for i in range(len(conv)):
            if obj["label"] is False and i == last:
                continue  # the undesirable completion itself
            if meta["completion"] == "answer" and i == last:
                continue
            if not is_call_turn(conv, i) and not (i == last and meta["completion"] == "call"):
                continue
            parsed = parse_call(conv[i]["content"])
            if isinstance(parsed, str):
                problems.append((ln, f"turn {i}: {parsed}"))
                continue
            prior = "\n".join(m["content"] for m in conv[:i])
            a = parsed["arguments"]
            for key in {"read_note": ["path"], "append_to_note": ["path"], "move_note": ["src"]}.get(parsed["name"], []):
                if a[key] not in prior:
                    problems.append((ln, f"turn {i}: path {a[key]} not grounded"))
        if obj["label"] is False and meta["completion"] == "call":
            bt = meta["bad_type"]
            parsed = parse_call(conv[-1]["content"])
            if bt == "malformed_json":
                try:
                    json.loads(conv[-1]["content"])
                    ok = False
                except ValueError:
                    ok = True
                if not ok and not conv[-1]["content"].startswith(("Sure", "Okay", "Here")):
                    problems.append((ln, "malformed example parses"))
            if bt in ("missing_required_args", "bad_arguments") and not isinstance(parsed, str):
                prior = "\n".join(m["content"] for m in conv[:-1])
                a = parsed["arguments"]
                grounded = all(a.get(k, "") in prior for k in ("path", "src") if k in a and parsed["name"] != "create_note")
                if grounded:
                    problems.append((ln, f"{bt} example looks valid"))
        words = sum(len(m["content"].split()) for m in conv)
        if words > MAX_WORDS:
            problems.append((ln, f"too long ({words} words)"))
    return problems


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def call_id(line, turn):
    """A deterministic 9-character alphanumeric tool-call id (the length Mistral's v3 format uses)."""
    return hashlib.sha256(f"{line}:{turn}".encode()).hexdigest()[:9]


def to_native(line_no, conv):
    """The same conversation with native tool calls: each assistant turn that is a {name, arguments}
    object becomes a structured OpenAI-form call (arguments as a JSON string, with an id), and the
    tool result after it names the call. Text that is not such an object (a malformed call) stays text."""
    out, last_id = [], None
    for i, m in enumerate(conv):
        try:
            obj = json.loads(m["content"]) if m["role"] == "assistant" else None
        except ValueError:
            obj = None
        if isinstance(obj, dict) and set(obj) == {"name", "arguments"} and isinstance(obj["arguments"], dict):
            last_id = call_id(line_no, i)
            fn = {"name": obj["name"], "arguments": dumps(obj["arguments"])}
            out.append({"role": "assistant", "content": None,
                        "tool_calls": [{"id": last_id, "type": "function", "function": fn}]})
        elif m["role"] == "tool" and "tool_calls" in out[-1]:
            name = out[-1]["tool_calls"][0]["function"]["name"]
            out.append({"role": "tool", "tool_call_id": last_id, "name": name, "content": m["content"]})
        else:
            out.append(m)
    return out


def percentile(sorted_vals, p):
    k = (len(sorted_vals) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return round(sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--native", action="store_true",
                    help=f"write {NATIVE_PATH.name}: the same examples with native (structured) tool calls")
    args = ap.parse_args(argv)
    rng = random.Random(SEED)
    plan = [None] * (N_TOTAL - N_BAD) + [BAD_TYPES[i % len(BAD_TYPES)] for i in range(N_BAD)]
    rng.shuffle(plan)

    lines, metas, seen = [], [], set()
    for bad_type in plan:
        good = bad_type is None
        for _attempt in range(1000):
            built = build_example(rng, good, bad_type)
            if built is None:
                continue
            conv, meta = built
            if sum(len(m["content"].split()) for m in conv) > MAX_WORDS:
                continue
            line = dumps({"conversations": conv, "label": good})
            if line in seen:
                continue
            break
        else:
            raise RuntimeError(f"could not build a unique example for {bad_type}")
        seen.add(line)
        meta["bad_type"] = bad_type
        lines.append(line)
        metas.append(meta)

    if args.native:
        native = [dumps({"messages": to_native(n, json.loads(line)["conversations"]), "label": json.loads(line)["label"]})
                  for n, line in enumerate(lines, 1)]
        with open(NATIVE_PATH, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(native) + "\n")
        print(f"wrote {len(native)} examples with native tool calls to {NATIVE_PATH.name}")
    else:
        with open(DATA_PATH, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    with open(TOOLS_PATH, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(TOOLS, ensure_ascii=False, indent=2) + "\n")

    problems = validate(lines, metas)
    summarize(lines, metas)
    if problems:
        for ln, p in problems[:30]:
            print(f"PROBLEM line {ln}: {p}", file=sys.stderr)
        print(f"{len(problems)} problems", file=sys.stderr)
        return 1
    print("validation: OK (valid JSON, last turn assistant, no duplicates, desirable tool calls valid and grounded)")
    return 0


def summarize(lines, metas):
    def count(key_fn, items):
        out = {}
        for it in items:
            k = key_fn(it)
            out[k] = out.get(k, 0) + 1
        return out

    n_good = sum(m["bad_type"] is None for m in metas)
    print(f"wrote {len(lines)} examples to {DATA_PATH.name} and {len(TOOLS)} tool schemas to {TOOLS_PATH.name}")
    print(f"labels: true={n_good} false={len(lines) - n_good}")
    print(f"with system prompt: {sum(m['system'] for m in metas)}")
    sc = count(lambda m: m["struct"], metas)
    names = {"a": "a (request -> tool call)", "b": "b (call -> result -> answer)",
             "c1": "c (two user turns, small talk first)", "c2": "c (two user turns, follow-up on a tool result)"}
    print("structures:")
    for k in ["a", "b", "c1", "c2"]:
        print(f"  {names[k]:<48} {sc.get(k, 0)}")
    print("completion is a tool call / a natural-language answer (desirable only): "
          f"{sum(m['completion'] == 'call' and m['bad_type'] is None for m in metas)} / "
          f"{sum(m['completion'] == 'answer' and m['bad_type'] is None for m in metas)}")
    kc = count(lambda m: m["kind"], [m for m in metas if m["bad_type"] is None])
    print("desirable examples by final intent: " + ", ".join(f"{k}={kc[k]}" for k in sorted(kc)))
    print("undesirable types:")
    bad = [m for m in metas if m["bad_type"] is not None]
    bc = count(lambda m: m["bad_type"], bad)
    for t in BAD_TYPES:
        vc = count(lambda m: m["variant"], [m for m in bad if m["bad_type"] == t])
        detail = ", ".join(f"{k}={vc[k]}" for k in sorted(vc) if k) if any(vc_k for vc_k in vc) else ""
        print(f"  {t:<24} {bc.get(t, 0):>3}" + (f"   ({detail})" if detail else ""))
    words = sorted(sum(len(m["content"].split()) for m in json.loads(line)["conversations"]) for line in lines)
    print("words per example: " + ", ".join(f"p{p}={percentile(words, p)}" for p in (5, 25, 50, 75, 95))
          + f", min={words[0]}, max={words[-1]}")


if __name__ == "__main__":
    sys.exit(main())
