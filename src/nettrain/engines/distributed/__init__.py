"""engines/distributed"""
