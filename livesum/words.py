"""Capitalized words that are never people's names.

Whisper capitalizes sentence starts ("Yeah, could you...", "Morning, all") and some words inside
sentences (weekdays, months), and a small LM gives "Team" or "Everyone" as an owner. Shared by the
owners of action items (livesum/llm/minutes.py) and the names given to diarized voices
(livesum/asr/speaker_names.py), which must not take "Yeah, can you..." for someone addressed.
"""

from __future__ import annotations

NOT_NAMES = frozenset({
    "I", "We", "You", "He", "She", "They", "It", "That", "This", "There", "Here", "What", "Which", "Who", "When",
    "Everyone", "Everybody", "Someone", "Somebody", "Nobody", "None", "Null", "Team", "The", "All", "Unknown",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
    "Okay", "Ok", "Yes", "No", "Yeah", "Yep", "Nope", "So", "Sure", "Actually", "Good", "Great", "Well", "Right",
    "Thanks", "Morning", "Hi", "Hello", "Hey", "Oh", "Also", "And", "But", "Anyway", "Fine", "Perfect", "Maybe",
    "Then", "Now", "Honestly", "Lovely", "Brilliant", "Cheers", "Agreed", "Absolutely", "Exactly", "Definitely",
    "Sorry", "Please", "Look", "Listen", "Alright", "Cool", "Nice", "True", "Correct", "Indeed", "Obviously",
    "Basically", "Wait", "Remember", "Honest", "Sounds", "Um", "Uh", "Hmm", "Mind", "Speaking",
    "Just", "Not", "Still", "Only", "Really", "Happy", "Glad", "Afraid", "Going", "Done", "Back",
})
