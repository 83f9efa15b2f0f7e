"""Small, runnable demos that teach how a GPT works (`gpt2kit demo NAME`).

babygpt   a 2-token GPT with context 3 is a Markov chain over 8 states (Karpathy's babyGPT)
addition  a GPT that learns to add n-digit numbers (minGPT's play_math)
chat_data synthetic arithmetic conversations for chat SFT (`gpt2kit demo chat-data`)
"""
