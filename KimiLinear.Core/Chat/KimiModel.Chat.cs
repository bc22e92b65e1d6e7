using KimiLinear.Chat;
using KimiLinear.Generation;
using Microsoft.Extensions.AI;

namespace KimiLinear;

public sealed partial class KimiModel
{
    /// <summary>
    /// This model as a Microsoft.Extensions.AI <see cref="IChatClient"/> (a <see cref="KimiChatClient"/>); disposing the
    /// client does not dispose the model.
    /// </summary>
    /// <param name="defaults">Generation options for what a call's <see cref="ChatOptions"/> leave unset.</param>
    /// <exception cref="InvalidOperationException">The checkpoint has no tokenizer.</exception>
    public IChatClient AsChatClient(GenerationOptions? defaults = null) => new KimiChatClient(this, defaults);
}
