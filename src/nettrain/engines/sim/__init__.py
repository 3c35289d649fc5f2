"""engines/sim"""
